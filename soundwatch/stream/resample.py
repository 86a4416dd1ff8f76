"""Streaming downmix and resampling to the models' 32 kHz.

``StreamingResampler`` gives, for any chunking of the input, the same samples as
``torchaudio.functional.resample(whole_signal, orig, 32000)`` with its default arguments
(Hann-windowed sinc, ``lowpass_filter_width=6``, ``rolloff=0.99``), up to float32 rounding of
the convolution. It builds the very same kernel (``torchaudio.transforms.Resample`` with
``dtype=float32``, which computes it exactly as ``functional.resample`` does for a float32
waveform) and applies it block by block, carrying the input context that the next output
samples still need. The strided convolution is done as one matrix product of the input
frames (``steps x kernel``) with the kernel (``kernel x new``) in numpy: the same sums as
torchaudio's ``conv1d``, without going through torch's intra-op thread pool, which the model
shares and which stalls small calls for tens of milliseconds on a busy machine.

torchaudio pads ``width`` zeros on the left and ``width + orig`` zeros on the right and trims
the result to ``ceil(len * new / orig)``; the streaming version starts with the same left
zeros and does the right padding and the trimming in ``flush``.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

TARGET_RATE = 32000


def downmix(frames: np.ndarray) -> np.ndarray:
    """Mean of the channels of ``(frames, channels)`` (or 1-D mono) as contiguous float32."""
    if frames.ndim == 1:
        return np.ascontiguousarray(frames, dtype=np.float32)
    if frames.shape[1] == 1:
        return np.ascontiguousarray(frames[:, 0], dtype=np.float32)
    return np.ascontiguousarray(frames.mean(axis=1, dtype=np.float32), dtype=np.float32)


class StreamingResampler:
    """Resample a mono float32 stream from ``orig_rate`` to ``new_rate`` chunk by chunk."""

    def __init__(self, orig_rate: int, new_rate: int = TARGET_RATE):
        if orig_rate <= 0 or new_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
        self.orig_rate = int(orig_rate)
        self.new_rate = int(new_rate)
        self.passthrough = self.orig_rate == self.new_rate
        gcd = math.gcd(self.orig_rate, self.new_rate)
        self._orig = self.orig_rate // gcd  # input samples per conv step
        self._new = self.new_rate // gcd  # output samples per conv step
        if self.passthrough:
            self._matrix = np.zeros((0, 0), dtype=np.float32)
            self._width = 0
        else:
            import torch  # deferred: torch takes seconds to import, passthrough needs none
            import torchaudio

            transform = torchaudio.transforms.Resample(
                self.orig_rate, self.new_rate, dtype=torch.float32
            )
            # torch kernel (new, 1, 2 * width + orig) -> matrix (2 * width + orig, new)
            kernel = transform.kernel.detach()[:, 0, :].numpy()
            self._matrix = np.ascontiguousarray(kernel.T, dtype=np.float32)
            self._width = int(transform.width)
        self.reset()

    @property
    def kernel_size(self) -> int:
        """Input samples one conv step looks at (``2 * width + orig``)."""
        return 2 * self._width + self._orig

    def reset(self) -> None:
        """Start a new, independent signal (forget context and counters)."""
        self._buffer = np.zeros(self._width, dtype=np.float32)  # torchaudio's left padding
        self._consumed_in = 0  # input samples fed so far
        self._produced = 0  # output samples returned so far

    @property
    def samples_in(self) -> int:
        """Input samples fed since the last reset."""
        return self._consumed_in

    @property
    def samples_out(self) -> int:
        """Output samples returned since the last reset."""
        return self._produced

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Feed mono float32 input; return every output sample that is now final."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._consumed_in += len(samples)
        if self.passthrough:
            self._produced += len(samples)
            return np.ascontiguousarray(samples)
        self._buffer = np.concatenate((self._buffer, samples))
        return self._convolve()

    def flush(self) -> np.ndarray:
        """End the signal: pad like torchaudio, return the remaining samples, then reset."""
        if self.passthrough:
            self.reset()
            return np.zeros(0, dtype=np.float32)
        self._buffer = np.concatenate(
            (self._buffer, np.zeros(self._width + self._orig, dtype=np.float32))
        )
        out = self._convolve()
        target = -(-self._new * self._consumed_in // self._orig)  # ceil
        keep = max(0, target - (self._produced - len(out)))
        out = out[:keep]
        self.reset()
        return out

    def _convolve(self) -> np.ndarray:
        size = self.kernel_size
        if len(self._buffer) < size:
            return np.zeros(0, dtype=np.float32)
        steps = (len(self._buffer) - size) // self._orig + 1
        used = (steps - 1) * self._orig + size
        windows = sliding_window_view(self._buffer[:used], size)[:: self._orig]
        frames = np.ascontiguousarray(windows)  # (steps, size)
        out = (frames @ self._matrix).reshape(-1)  # step k gives outputs k*new .. k*new+new-1
        self._buffer = self._buffer[steps * self._orig :].copy()
        self._produced += len(out)
        return out

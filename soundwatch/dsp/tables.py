"""The frontend's fixed settings and the lookup tables built from them once, at import.

The settings are the ones the EfficientAT AudioSet checkpoints were trained with (see
``../shared/models/README.md``); they are not configurable because the weights expect them.
The numba kernels read these module-level arrays as compile-time constants.
"""

from __future__ import annotations

import math

import numpy as np

from soundwatch.dsp.melbank import MelSegments, mel_segments

SAMPLE_RATE = 32000
"""Input sample rate in Hz (mono)."""
N_FFT = 1024
HOP = 320
"""Samples between frames: frame ``i`` is centred at input sample ``i * HOP``."""
WIN_LENGTH = 800
N_MELS = 128
FMIN = 0.0
FMAX = 15000.0
PREEMPHASIS = 0.97
LOG_OFFSET = 1e-5
NORM_SHIFT = 4.5
NORM_SCALE = 5.0


def hann_symmetric_float32(length: int) -> np.ndarray:
    """Symmetric (``periodic=False``) Hann window ``0.5 - 0.5 cos(2 pi k / (L - 1))`` rounded
    step by step in float32, as a float32 reference computes it.

    Why not the exact float64 window: the reference's window differs from it by up to
    ~3e-8 (cancellation in ``0.5 - 0.5 cos`` near the edges), and that pattern leaks loud
    tones into quiet bins enough to move the golden log-mel by ~1e-4 (``chirp_odd``).
    """
    k = np.arange(length, dtype=np.float32)
    angle = k * np.float32(2.0 * math.pi / (length - 1))
    cos = np.cos(angle.astype(np.float64)).astype(np.float32)
    return cos * np.float32(-0.5) + np.float32(0.5)


# The 800-sample window sits centred in the 1024-sample frame and its two end taps are exactly
# zero, so a frame reads only the 798 samples under the inner taps. With ``center=True`` the
# frame ``t`` window starts at padded index ``t*HOP + (N_FFT - WIN_LENGTH)//2``, i.e. at
# pre-emphasised index ``t*HOP - WIN_LENGTH//2``; the first inner tap is one later.
_HANN = hann_symmetric_float32(WIN_LENGTH)
if _HANN[0] != 0.0 or _HANN[-1] != 0.0:
    raise ImportError("the window's end taps must be exactly zero to be skipped")
WINDOW_TAPS = np.ascontiguousarray(_HANN[1:-1], dtype=np.float64)
FRAME_SPAN = WINDOW_TAPS.shape[0]  # 798
FRAME_BACK = WIN_LENGTH // 2 - 1  # 399: frame t reads e[t*HOP - 399 : t*HOP + 399]

RING_SIZE = 1024
"""Pre-emphasised samples a stream keeps. A frame is computed when at most FRAME_SPAN + 1
samples lie between its first sample and the newest one, so the ring needs more than that;
a power of two so that ``i & RING_MASK`` indexes it."""
RING_MASK = RING_SIZE - 1
if RING_SIZE & RING_MASK or RING_SIZE < FRAME_SPAN + 2:
    raise ImportError("RING_SIZE must be a power of two larger than a frame")

# Real FFT of N_FFT points as a complex FFT of N_FFT/2 points on (even + i*odd) samples,
# computed by a self-sorting (Stockham) decimation-in-frequency FFT: radix-4 passes while 4
# divides the length, then one radix-2 pass if needed. Twiddles of pass ``p`` (length ``n``,
# stride ``s``) are ``exp(-2 pi i j q / n)`` for ``q < n / 4`` and ``j = 1, 2, 3``, stored
# from ``FFT_TWIDDLE_OFFSET[p]``.
FFT_HALF = N_FFT // 2
N_BINS = N_FFT // 2 + 1


def _stockham_radix4_plan(n_points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(lengths, strides, twiddle_offsets, radix2_stride)`` of the radix-4 passes.

    ``radix2_stride`` is 0 when no final radix-2 pass is needed.
    """
    if n_points & (n_points - 1):
        raise ValueError(f"FFT length must be a power of two, got {n_points}")
    lengths, strides, offsets = [], [], []
    n, stride, offset = n_points, 1, 0
    while n >= 4:
        lengths.append(n)
        strides.append(stride)
        offsets.append(offset)
        offset += n // 4
        n //= 4
        stride *= 4
    as_int = [np.array(values, dtype=np.int64) for values in (lengths, strides, offsets)]
    return as_int[0], as_int[1], as_int[2], stride if n == 2 else 0


FFT_PASS_LENGTH, FFT_PASS_STRIDE, FFT_TWIDDLE_OFFSET, FFT_RADIX2_STRIDE = _stockham_radix4_plan(
    FFT_HALF
)
FFT_N_PASSES = FFT_PASS_LENGTH.shape[0] + (1 if FFT_RADIX2_STRIDE else 0)


def _stockham_twiddles(j: int) -> tuple[np.ndarray, np.ndarray]:
    parts = [
        np.exp(-2j * math.pi * j * np.arange(n // 4, dtype=np.float64) / n)
        for n in FFT_PASS_LENGTH.tolist()
    ]
    values = np.concatenate(parts)
    return np.ascontiguousarray(values.real), np.ascontiguousarray(values.imag)


TWIDDLE1_RE, TWIDDLE1_IM = _stockham_twiddles(1)
TWIDDLE2_RE, TWIDDLE2_IM = _stockham_twiddles(2)
TWIDDLE3_RE, TWIDDLE3_IM = _stockham_twiddles(3)
# Untangling the half-size complex FFT into the real signal's spectrum: exp(-2 pi i k / N_FFT).
_split = 2.0 * math.pi * np.arange(N_BINS, dtype=np.float64) / N_FFT
SPLIT_COS = np.ascontiguousarray(np.cos(_split))
SPLIT_SIN = np.ascontiguousarray(np.sin(_split))

MEL_SEGMENTS: MelSegments = mel_segments(N_MELS, N_FFT, SAMPLE_RATE, FMIN, FMAX)
MEL_BOUNDS = MEL_SEGMENTS.bounds
MEL_FRACTION = MEL_SEGMENTS.fraction
MEL_BINS_USED = int(MEL_BOUNDS[-1])
"""One past the highest FFT bin any mel filter weighs: the spectrum above is never needed."""


def frames_for_samples(n_samples: int) -> int:
    """Frames of a whole waveform of ``n_samples`` (``1 + (n - 1) // HOP``; 0 when empty)."""
    if n_samples <= 0:
        return 0
    return 1 + (n_samples - 1) // HOP

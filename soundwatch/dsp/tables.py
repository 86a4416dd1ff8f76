"""The frontend's fixed settings and the lookup tables built from them once, at import.

The settings are the ones the EfficientAT AudioSet checkpoints were trained with (see
``../shared/models/README.md``); they are not configurable because the weights expect them.
The numba kernels read these module-level arrays as compile-time constants.
"""

from __future__ import annotations

import math

import numpy as np

from soundwatch.dsp.melbank import SparseMelBank, kaldi_mel_banks, sparsify

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
WINDOW_TAPS = np.ascontiguousarray(hann_symmetric_float32(WIN_LENGTH)[1:-1], dtype=np.float64)
FRAME_SPAN = WINDOW_TAPS.shape[0]  # 798
FRAME_BACK = WIN_LENGTH // 2 - 1  # 399: frame t reads e[t*HOP - 399 : t*HOP + 399]

RING_SIZE = 1024
"""Pre-emphasised samples a stream keeps (a power of two > FRAME_SPAN + HOP)."""
RING_MASK = RING_SIZE - 1

# Real FFT of N_FFT points as a complex FFT of N_FFT/2 points on (even + i*odd) samples.
FFT_HALF = N_FFT // 2
FFT_LOG2 = FFT_HALF.bit_length() - 1
N_BINS = N_FFT // 2 + 1


def _bit_reversal(n: int) -> np.ndarray:
    bits = n.bit_length() - 1
    return np.array([int(format(i, f"0{bits}b")[::-1], 2) for i in range(n)], dtype=np.int64)


BIT_REVERSE = _bit_reversal(FFT_HALF)
_angles = -2.0 * math.pi * np.arange(FFT_HALF // 2, dtype=np.float64) / FFT_HALF
TWIDDLE_RE = np.ascontiguousarray(np.cos(_angles))
TWIDDLE_IM = np.ascontiguousarray(np.sin(_angles))
_split = 2.0 * math.pi * np.arange(N_BINS, dtype=np.float64) / N_FFT
SPLIT_COS = np.ascontiguousarray(np.cos(_split))
SPLIT_SIN = np.ascontiguousarray(np.sin(_split))

MEL_BANK: SparseMelBank = sparsify(kaldi_mel_banks(N_MELS, N_FFT, SAMPLE_RATE, FMIN, FMAX))
MEL_STARTS = MEL_BANK.starts
MEL_OFFSETS = MEL_BANK.offsets
MEL_WEIGHTS = MEL_BANK.weights
MEL_BINS_USED = MEL_BANK.n_bins_used


def frames_for_samples(n_samples: int) -> int:
    """Frames of a whole waveform of ``n_samples`` (``1 + (n - 1) // HOP``; 0 when empty)."""
    if n_samples <= 0:
        return 0
    return 1 + (n_samples - 1) // HOP

"""Checking and sanitising waveforms before they reach the numba kernels.

Accepted: numpy arrays of a floating dtype. float16/float64 are converted to float32 (the
precision the model was trained with) and non-contiguous arrays are copied; everything else
(lists, integer PCM, complex, wrong number of dimensions) is a ``SoundwatchError`` that
says how to fix it. Non-finite samples are handled by the callers (offline: error;
streaming: replaced by 0 and counted).
"""

from __future__ import annotations

import numpy as np

from soundwatch.errors import SoundwatchError

_FLOAT32 = np.dtype(np.float32)


def as_float32_samples(samples: object, *, what: str, ndim: int) -> np.ndarray:
    """Return ``samples`` as a C-contiguous float32 array of ``ndim`` dimensions.

    ``what`` names the argument in error messages (e.g. ``"wave"``).
    """
    if (
        type(samples) is np.ndarray
        and samples.dtype == _FLOAT32
        and samples.ndim == ndim
        and samples.flags.c_contiguous
    ):
        return samples  # the common case, checked cheaply (this runs on every 10 ms push)
    if not isinstance(samples, np.ndarray):
        raise SoundwatchError(
            f"{what} must be a numpy array of float samples, got {type(samples).__name__}; "
            f"convert it with np.asarray({what}, dtype=np.float32)"
        )
    if samples.ndim != ndim:
        shape_hint = (
            "a 1-D mono waveform [samples]"
            if ndim == 1
            else "a 2-D array [streams, samples] (one row per stream)"
        )
        fix = " (average channels to mono first, e.g. x.mean(axis=0))" if ndim == 1 else ""
        raise SoundwatchError(f"{what} must be {shape_hint}, got shape {samples.shape}{fix}")
    dtype = samples.dtype
    if np.issubdtype(dtype, np.integer):
        raise SoundwatchError(
            f"{what} has integer dtype {dtype}; the frontend expects float samples in [-1, 1]: "
            f"scale PCM first, e.g. {what}.astype(np.float32) / {2 ** (8 * dtype.itemsize - 1)}"
        )
    if not np.issubdtype(dtype, np.floating):
        raise SoundwatchError(
            f"{what} has dtype {dtype}; pass real float samples (float32 preferred) in [-1, 1]"
        )
    return np.ascontiguousarray(samples, dtype=np.float32)

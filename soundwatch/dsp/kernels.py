"""numba kernels of the log-mel frontend: one stream's state advanced sample by sample.

Pre-emphasis is computed in float32 exactly as the float32 reference does (two roundings),
the window taps are the reference's float32 values; windowing, FFT, power, mel and log run
in float64 and the result is stored as float32. A stream's state is a few small
preallocated arrays (owned by ``StreamingLogMel`` in ``streaming.py``):

- ``ring``: float64 ``[RING_SIZE]``, pre-emphasised sample ``i`` lives at ``ring[i & RING_MASK]``;
- ``counters``: int64 ``[4]`` = samples pushed, pre-emphasised samples, frames emitted,
  non-finite samples replaced by zero;
- ``last``: float64 ``[1]``, the previous raw sample (pre-emphasis memory);
- ``work``: float64 ``[WORK_SIZE]``, FFT real/imaginary parts and the power spectrum.

Frame ``t`` reads pre-emphasised samples ``t*HOP - 399 .. t*HOP + 398`` (the 798 non-zero
taps of the centred 800-sample Hann window). Indices outside ``[0, m)`` are mirrored like
``numpy.pad(mode="reflect")`` (``torch.stft(center=True)`` for signals longer than the pad):
the mirror repeats with period ``2 (m - 1)``, which also defines short signals. A push emits
frame ``t`` as soon as ``m >= t*HOP + READY_LAG`` (no end mirror needed); ``flush`` emits the
rest. Both paths run the same per-frame code, so streaming and offline output are identical.

No kernel allocates: outputs and work buffers are passed in.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from soundwatch.dsp.tables import (
    BIT_REVERSE,
    FFT_HALF,
    FRAME_BACK,
    FRAME_SPAN,
    HOP,
    LOG_OFFSET,
    MEL_BINS_USED,
    MEL_OFFSETS,
    MEL_STARTS,
    MEL_WEIGHTS,
    N_BINS,
    N_MELS,
    NORM_SCALE,
    NORM_SHIFT,
    PREEMPHASIS,
    RING_MASK,
    SPLIT_COS,
    SPLIT_SIN,
    TWIDDLE_IM,
    TWIDDLE_RE,
    WINDOW_TAPS,
)

READY_LAG = FRAME_BACK + 1
"""Frame ``t`` is complete once ``t*HOP + READY_LAG`` pre-emphasised samples exist (frame 0
mirrors ``e[1..399]``, so it needs ``e[399]``)."""

WORK_SIZE = 2 * FFT_HALF + N_BINS
N_COUNTERS = 4
C_SAMPLES, C_PRE, C_FRAMES, C_NONFINITE = 0, 1, 2, 3

_PRE_NEG = np.float32(-PREEMPHASIS)
# njit is nopython mode; nogil lets capture threads run while a kernel works; no fastmath so
# float32 rounding stays exactly the reference's.
_JIT = {"nogil": True, "cache": True, "fastmath": False}


@nb.njit(**_JIT)
def reflect_index(i: int, m: int) -> int:
    """Map any index onto ``[0, m)`` by repeated mirroring without repeating the edge."""
    if m == 1:
        return 0
    period = 2 * (m - 1)
    r = i % period
    if r >= m:
        r = period - r
    return r


def frames_ready(n_samples: int) -> int:
    """How many frames a stream can emit before its end is known, after ``n_samples`` inputs."""
    m = n_samples - 1  # pre-emphasised samples
    if m < READY_LAG:
        return 0
    return (m - READY_LAG) // HOP + 1


@nb.njit(**_JIT)
def _fft_in_place(re: np.ndarray, im: np.ndarray) -> None:
    """Iterative radix-2 DIT complex FFT of ``FFT_HALF`` points on bit-reversed input."""
    # First stage (size 2) has the trivial twiddle 1.
    for a in range(0, FFT_HALF, 2):
        b = a + 1
        tr = re[b]
        ti = im[b]
        re[b] = re[a] - tr
        im[b] = im[a] - ti
        re[a] += tr
        im[a] += ti
    size = 4
    while size <= FFT_HALF:
        half = size // 2
        step = FFT_HALF // size
        for start in range(0, FFT_HALF, size):
            for j in range(half):
                wr = TWIDDLE_RE[j * step]
                wi = TWIDDLE_IM[j * step]
                a = start + j
                b = a + half
                br = re[b]
                bi = im[b]
                tr = wr * br - wi * bi
                ti = wr * bi + wi * br
                re[b] = re[a] - tr
                im[b] = im[a] - ti
                re[a] += tr
                im[a] += ti
        size *= 2


@nb.njit(**_JIT)
def compute_frame(
    ring: np.ndarray, m: int, t: int, work: np.ndarray, out: np.ndarray, col: int
) -> None:
    """Write the normalised log-mel of frame ``t`` into ``out[:, col]``."""
    re = work[:FFT_HALF]
    im = work[FFT_HALF : 2 * FFT_HALF]
    power = work[2 * FFT_HALF :]
    start = t * HOP - FRAME_BACK
    # Window the frame's samples straight into bit-reversed (even + i*odd) order.
    if start >= 0 and start + FRAME_SPAN <= m:
        for k in range(FRAME_SPAN // 2):
            j = 2 * k
            p = BIT_REVERSE[k]
            re[p] = ring[(start + j) & RING_MASK] * WINDOW_TAPS[j]
            im[p] = ring[(start + j + 1) & RING_MASK] * WINDOW_TAPS[j + 1]
    else:
        for k in range(FRAME_SPAN // 2):
            j = 2 * k
            p = BIT_REVERSE[k]
            re[p] = ring[reflect_index(start + j, m) & RING_MASK] * WINDOW_TAPS[j]
            im[p] = ring[reflect_index(start + j + 1, m) & RING_MASK] * WINDOW_TAPS[j + 1]
    for k in range(FRAME_SPAN // 2, FFT_HALF):
        p = BIT_REVERSE[k]
        re[p] = 0.0
        im[p] = 0.0
    _fft_in_place(re, im)

    # Split the half-size complex FFT into the real signal's spectrum; keep |X|^2 only up
    # to the highest bin a mel filter uses.
    power[0] = (re[0] + im[0]) * (re[0] + im[0])
    for k in range(1, MEL_BINS_USED):
        zr = re[k]
        zi = im[k]
        cr = re[FFT_HALF - k]
        ci = -im[FFT_HALF - k]
        even_r = 0.5 * (zr + cr)
        even_i = 0.5 * (zi + ci)
        odd_r = 0.5 * (zi - ci)
        odd_i = -0.5 * (zr - cr)
        c = SPLIT_COS[k]
        s = SPLIT_SIN[k]
        xr = even_r + c * odd_r + s * odd_i
        xi = even_i + c * odd_i - s * odd_r
        power[k] = xr * xr + xi * xi

    for b in range(N_MELS):
        first = MEL_STARTS[b]
        lo = MEL_OFFSETS[b]
        hi = MEL_OFFSETS[b + 1]
        acc = 0.0
        for w in range(hi - lo):
            acc += MEL_WEIGHTS[lo + w] * power[first + w]
        out[b, col] = (math.log(acc + LOG_OFFSET) + NORM_SHIFT) / NORM_SCALE


@nb.njit(**_JIT)
def push_samples(
    chunk: np.ndarray,
    ring: np.ndarray,
    counters: np.ndarray,
    last: np.ndarray,
    work: np.ndarray,
    out: np.ndarray,
    first_col: int,
) -> int:
    """Feed ``chunk`` (float32) into one stream; frames it completes go to ``out[:, first_col:]``.

    Non-finite samples are replaced by 0 and counted. ``out`` must have room for
    ``frames_ready(samples_after) - frames_before`` columns. Returns the number of frames written.
    """
    n = counters[C_SAMPLES]
    m = counters[C_PRE]
    t = counters[C_FRAMES]
    bad = counters[C_NONFINITE]
    prev = last[0]
    col = first_col
    for i in range(chunk.shape[0]):
        v = np.float64(chunk[i])
        if not math.isfinite(v):
            v = 0.0
            bad += 1
        if n > 0:
            # Rounded twice in float32 like the reference's conv1d (bitwise equal to it).
            ring[m & RING_MASK] = np.float32(v) + np.float32(_PRE_NEG * np.float32(prev))
            m += 1
            if m >= t * HOP + READY_LAG:
                compute_frame(ring, m, t, work, out, col)
                t += 1
                col += 1
        prev = v
        n += 1
    counters[C_SAMPLES] = n
    counters[C_PRE] = m
    counters[C_FRAMES] = t
    counters[C_NONFINITE] = bad
    last[0] = prev
    return col - first_col


@nb.njit(**_JIT)
def flush_frames(
    ring: np.ndarray, counters: np.ndarray, work: np.ndarray, out: np.ndarray, first_col: int
) -> int:
    """Emit the frames that need the end mirror into ``out[:, first_col:]`` (needs ``m >= 1``).

    Returns the number of frames written.
    """
    m = counters[C_PRE]
    t = counters[C_FRAMES]
    col = first_col
    while t <= m // HOP:
        compute_frame(ring, m, t, work, out, col)
        t += 1
        col += 1
    counters[C_FRAMES] = t
    return col - first_col


@nb.njit(**_JIT)
def push_samples_batch(
    chunks: np.ndarray,
    rings: np.ndarray,
    counters: np.ndarray,
    lasts: np.ndarray,
    works: np.ndarray,
    out: np.ndarray,
) -> int:
    """``push_samples`` for ``S`` aligned streams: ``chunks [S, L]`` -> ``out [S, N_MELS, k]``."""
    col = 0
    for s in range(chunks.shape[0]):
        col = push_samples(chunks[s], rings[s], counters[s], lasts[s], works[s], out[s], 0)
    return col


@nb.njit(**_JIT)
def flush_frames_batch(
    rings: np.ndarray, counters: np.ndarray, works: np.ndarray, out: np.ndarray
) -> int:
    """``flush_frames`` for ``S`` aligned streams."""
    col = 0
    for s in range(rings.shape[0]):
        col = flush_frames(rings[s], counters[s], works[s], out[s], 0)
    return col

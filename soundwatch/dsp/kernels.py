"""numba kernels of the log-mel frontend: one stream's state advanced sample by sample.

Pre-emphasis is computed in float32 exactly as the float32 reference does (two roundings),
the window taps are the reference's float32 values; windowing, FFT, power, mel and log run
in float64 and the result is stored as float32. A stream's state is a few small
preallocated arrays (owned by ``StreamingLogMel`` in ``streaming.py``):

- ``state``: float32 ``[STATE_SIZE]``: the ring of the last ``RING_SIZE`` pre-emphasised
  samples (sample ``i`` at ``i & RING_MASK``; they are float32 values) and the previous raw
  sample (pre-emphasis memory);
- ``counters``: int64 ``[4]`` = samples pushed, pre-emphasised samples, frames emitted,
  non-finite samples replaced by zero;
- ``work``: float64 ``[WORK_SIZE]`` scratch (FFT buffers, power spectrum, mel energies),
  which any number of streams processed one after another can share.

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
from numba import types
from numba.extending import intrinsic

from soundwatch.dsp.tables import (
    FFT_HALF,
    FFT_PASS_LENGTH,
    FFT_PASS_STRIDE,
    FFT_RADIX2_STRIDE,
    FFT_TWIDDLE_OFFSET,
    FRAME_BACK,
    FRAME_SPAN,
    HOP,
    LOG_OFFSET,
    MEL_BINS_USED,
    MEL_BOUNDS,
    MEL_FRACTION,
    N_BINS,
    N_MELS,
    NORM_SCALE,
    NORM_SHIFT,
    PREEMPHASIS,
    RING_MASK,
    RING_SIZE,
    SPLIT_COS,
    SPLIT_SIN,
    TWIDDLE1_IM,
    TWIDDLE1_RE,
    TWIDDLE2_IM,
    TWIDDLE2_RE,
    TWIDDLE3_IM,
    TWIDDLE3_RE,
    WINDOW_TAPS,
)

READY_LAG = FRAME_BACK + 1
"""Frame ``t`` is complete once ``t*HOP + READY_LAG`` pre-emphasised samples exist (frame 0
mirrors ``e[1..399]``, so it needs ``e[399]``)."""

# work buffer layout: two complex ping-pong buffers (real and imaginary parts apart), the
# power spectrum, then the mel energies and two scratch rows for the logarithm.
_A_RE, _A_IM, _B_RE, _B_IM, _POWER = (i * FFT_HALF for i in range(5))
_MEL = _POWER + N_BINS
_MANTISSA = _MEL + N_MELS
_LOG = _MANTISSA + N_MELS
WORK_SIZE = _LOG + N_MELS
# A stream's float32 state: the ring of pre-emphasised samples, then the last raw sample.
_LAST = RING_SIZE
STATE_SIZE = _LAST + 1
N_COUNTERS = 4
C_SAMPLES, C_PRE, C_FRAMES, C_NONFINITE = 0, 1, 2, 3

_PRE_NEG = np.float32(-PREEMPHASIS)
# njit is nopython mode; nogil lets capture threads run while a kernel works. numpy's error
# model drops the ZeroDivisionError check that keeps LLVM from vectorising divisions.
# _JIT_EXACT (pre-emphasis) has no fastmath, so its float32 rounding stays exactly the
# reference's (a fused multiply-add would round once instead of twice); the float64 spectral
# kernels (_JIT) may fuse multiply-adds ("contract", 15% faster; only more accurate), nothing
# else of fastmath.
_JIT_EXACT = {"nogil": True, "cache": True, "fastmath": False, "error_model": "numpy"}
_JIT = {**_JIT_EXACT, "fastmath": {"contract"}}


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
def _radix4_pass(
    xr: np.ndarray,
    xi: np.ndarray,
    yr: np.ndarray,
    yi: np.ndarray,
    n: int,
    stride: int,
    twiddle_offset: int,
) -> None:
    """One Stockham radix-4 decimation-in-frequency pass, ``x`` -> ``y``."""
    quarter = n // 4
    for p in range(quarter):
        w = twiddle_offset + p
        w1r = TWIDDLE1_RE[w]
        w1i = TWIDDLE1_IM[w]
        w2r = TWIDDLE2_RE[w]
        w2i = TWIDDLE2_IM[w]
        w3r = TWIDDLE3_RE[w]
        w3i = TWIDDLE3_IM[w]
        ia = stride * p
        ib = ia + stride * quarter
        ic = ib + stride * quarter
        id_ = ic + stride * quarter
        o0 = stride * 4 * p
        o1 = o0 + stride
        o2 = o1 + stride
        o3 = o2 + stride
        for q in range(stride):
            ar = xr[ia + q]
            ai = xi[ia + q]
            br = xr[ib + q]
            bi = xi[ib + q]
            cr = xr[ic + q]
            ci = xi[ic + q]
            dr = xr[id_ + q]
            di = xi[id_ + q]
            apc_r = ar + cr
            apc_i = ai + ci
            amc_r = ar - cr
            amc_i = ai - ci
            bpd_r = br + dr
            bpd_i = bi + di
            bmd_r = br - dr
            bmd_i = bi - di
            yr[o0 + q] = apc_r + bpd_r
            yi[o0 + q] = apc_i + bpd_i
            # (a - c) - i (b - d), (a + c) - (b + d), (a - c) + i (b - d), then twiddled
            t_r = amc_r + bmd_i
            t_i = amc_i - bmd_r
            yr[o1 + q] = w1r * t_r - w1i * t_i
            yi[o1 + q] = w1r * t_i + w1i * t_r
            t_r = apc_r - bpd_r
            t_i = apc_i - bpd_i
            yr[o2 + q] = w2r * t_r - w2i * t_i
            yi[o2 + q] = w2r * t_i + w2i * t_r
            t_r = amc_r - bmd_i
            t_i = amc_i + bmd_r
            yr[o3 + q] = w3r * t_r - w3i * t_i
            yi[o3 + q] = w3r * t_i + w3i * t_r


@nb.njit(**_JIT)
def _radix2_last_pass(
    xr: np.ndarray, xi: np.ndarray, yr: np.ndarray, yi: np.ndarray, stride: int
) -> None:
    """The closing Stockham radix-2 pass (length 2, all twiddles 1), ``x`` -> ``y``."""
    for q in range(stride):
        ar = xr[q]
        ai = xi[q]
        br = xr[q + stride]
        bi = xi[q + stride]
        yr[q] = ar + br
        yi[q] = ai + bi
        yr[q + stride] = ar - br
        yi[q + stride] = ai - bi


# The pass plan of the 512-point FFT (4 x 4 x 4 x 4 x 2), spelled out below so that numba
# sees each pass's length and stride as constants: about 3x faster than looping over the
# plan arrays at run time.
_PLAN = tuple(
    (int(n), int(s), int(o))
    for n, s, o in zip(FFT_PASS_LENGTH, FFT_PASS_STRIDE, FFT_TWIDDLE_OFFSET, strict=True)
)
if FFT_HALF != 512 or len(_PLAN) != 4 or FFT_RADIX2_STRIDE != 256:
    raise ImportError("fft_half spells out the 512-point plan; update it with FFT_HALF")
_P0, _P1, _P2, _P3 = _PLAN


@nb.njit(**_JIT)
def fft_half(work: np.ndarray) -> int:
    """Complex FFT of ``FFT_HALF`` points held in ``work``'s buffer A (in natural order).

    Returns the offset in ``work`` of the result's real part (imaginary part follows).
    """
    a_re = work[_A_RE:_A_IM]
    a_im = work[_A_IM:_B_RE]
    b_re = work[_B_RE:_B_IM]
    b_im = work[_B_IM:_POWER]
    _radix4_pass(a_re, a_im, b_re, b_im, _P0[0], _P0[1], _P0[2])
    _radix4_pass(b_re, b_im, a_re, a_im, _P1[0], _P1[1], _P1[2])
    _radix4_pass(a_re, a_im, b_re, b_im, _P2[0], _P2[1], _P2[2])
    _radix4_pass(b_re, b_im, a_re, a_im, _P3[0], _P3[1], _P3[2])
    _radix2_last_pass(a_re, a_im, b_re, b_im, FFT_RADIX2_STRIDE)
    return _B_RE


_LN2 = math.log(2.0)
_SQRT2 = math.sqrt(2.0)
_EXPONENT_MASK = np.int64(0x7FF)
_MANTISSA_MASK = np.int64(0x000F_FFFF_FFFF_FFFF)
_ONE_BITS = np.int64(0x3FF0_0000_0000_0000)  # the bits of 1.0


@intrinsic
def _float_bits(typingctx, value):
    """The bit pattern of a float64 as an int64 (a register move, no memory round trip)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.int64))

    return types.int64(types.float64), codegen


@intrinsic
def _bits_float(typingctx, bits):
    """The float64 whose bit pattern is the int64 ``bits``."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))

    return types.float64(types.int64), codegen


@nb.njit(**_JIT)
def log_positive(values: np.ndarray, result: np.ndarray) -> None:
    """``result[i] = ln(values[i])`` for positive, finite, normal float64 values.

    Written so that LLVM vectorises it (``math.log`` is a scalar libm call per value, ~10x
    slower here): split ``x = 2^e m`` through the bit pattern, fold ``m`` into
    ``[sqrt(1/2), sqrt(2))`` and sum ``ln m = 2 atanh(s)``, ``s = (m - 1) / (m + 1)``, to the
    ``s^13`` term (|s| < 0.172: truncation below 2e-11 absolute). Branch-free, and the
    division only vectorises because the kernels use numpy's error model (no
    ZeroDivisionError check).
    """
    for i in range(values.shape[0]):
        b = _float_bits(values[i])
        e = np.float64(((b >> 52) & _EXPONENT_MASK) - 1023)
        m = _bits_float((b & _MANTISSA_MASK) | _ONE_BITS)
        big = m > _SQRT2
        m = m * 0.5 if big else m
        e = e + 1.0 if big else e
        s = (m - 1.0) / (m + 1.0)
        s2 = s * s
        series = 1.0 / 13.0
        series = 1.0 / 11.0 + s2 * series
        series = 1.0 / 9.0 + s2 * series
        series = 1.0 / 7.0 + s2 * series
        series = 1.0 / 5.0 + s2 * series
        series = 1.0 / 3.0 + s2 * series
        series = 1.0 + s2 * series
        result[i] = e * _LN2 + 2.0 * s * series


@nb.njit(**_JIT)
def compute_frame(
    ring: np.ndarray, m: int, t: int, work: np.ndarray, out: np.ndarray, col: int
) -> None:
    """Write the normalised log-mel of frame ``t`` into ``out[:, col]``."""
    # Window the frame's samples into buffer A as FFT_HALF complex points (even + i*odd).
    zr = work[_A_RE:_A_IM]
    zi = work[_A_IM:_B_RE]
    start = t * HOP - FRAME_BACK
    if start >= 0 and start + FRAME_SPAN <= m:
        for k in range(FRAME_SPAN // 2):
            j = 2 * k
            zr[k] = ring[(start + j) & RING_MASK] * WINDOW_TAPS[j]
            zi[k] = ring[(start + j + 1) & RING_MASK] * WINDOW_TAPS[j + 1]
    else:
        for k in range(FRAME_SPAN // 2):
            j = 2 * k
            zr[k] = ring[reflect_index(start + j, m) & RING_MASK] * WINDOW_TAPS[j]
            zi[k] = ring[reflect_index(start + j + 1, m) & RING_MASK] * WINDOW_TAPS[j + 1]
    for k in range(FRAME_SPAN // 2, FFT_HALF):
        zr[k] = 0.0
        zi[k] = 0.0
    result = fft_half(work)
    re = work[result : result + FFT_HALF]
    im = work[result + FFT_HALF : result + 2 * FFT_HALF]

    # Untangle the real signal's spectrum X[k] = E[k] + exp(-2 pi i k / N_FFT) O[k] and keep
    # |X[k]|^2 up to the highest bin a mel filter uses.
    power = work[_POWER:_MEL]
    power[0] = (re[0] + im[0]) * (re[0] + im[0])
    for k in range(1, MEL_BINS_USED):
        zr_k = re[k]
        zi_k = im[k]
        cr = re[FFT_HALF - k]
        ci = -im[FFT_HALF - k]
        even_r = 0.5 * (zr_k + cr)
        even_i = 0.5 * (zi_k + ci)
        odd_r = 0.5 * (zi_k - ci)
        odd_i = -0.5 * (zr_k - cr)
        c = SPLIT_COS[k]
        s = SPLIT_SIN[k]
        xr = even_r + c * odd_r + s * odd_i
        xi = even_i + c * odd_i - s * odd_r
        power[k] = xr * xr + xi * xi

    # Mel energies from complementary triangle halves: segment b (bins between the centres
    # of filters b and b+1) gives (1 - f) p to filter b and f p to filter b + 1.
    mel = work[_MEL:_MANTISSA]
    carry = 0.0
    for k in range(MEL_BOUNDS[0], MEL_BOUNDS[1]):
        carry += MEL_FRACTION[k] * power[k]
    for b in range(N_MELS):
        total = 0.0
        upper = 0.0
        for k in range(MEL_BOUNDS[b + 1], MEL_BOUNDS[b + 2]):
            p = power[k]
            total += p
            upper += MEL_FRACTION[k] * p
        mel[b] = carry + (total - upper) + LOG_OFFSET
        carry = upper
    logs = work[_LOG:WORK_SIZE]
    log_positive(mel, logs)
    for b in range(N_MELS):
        out[b, col] = (logs[b] + NORM_SHIFT) / NORM_SCALE


@nb.njit(**_JIT_EXACT)
def push_samples(
    chunk: np.ndarray,
    state: np.ndarray,
    counters: np.ndarray,
    work: np.ndarray,
    out: np.ndarray,
    first_col: int,
) -> int:
    """Feed ``chunk`` (float32) into one stream; frames it completes go to ``out[:, first_col:]``.

    Non-finite samples are replaced by 0 and counted (so is the rare pre-emphasised value that
    overflows float32). ``out`` must have room for ``frames_ready(samples_after) -
    frames_before`` columns. Returns the number of frames written.
    """
    ring = state[:_LAST]
    n = counters[C_SAMPLES]
    m = counters[C_PRE]
    t = counters[C_FRAMES]
    bad = counters[C_NONFINITE]
    prev = state[_LAST]
    length = chunk.shape[0]
    i = 0
    if n == 0 and length > 0:  # the very first sample only primes the pre-emphasis
        prev = chunk[0]
        if not math.isfinite(prev):
            prev = np.float32(0.0)
            bad += 1
        i = 1
    col = first_col
    while i < length:
        # Run up to the sample that completes the next frame, then compute that frame.
        stop = min(length, i + t * HOP + READY_LAG - m)
        for j in range(i, stop):
            v = chunk[j]
            if not math.isfinite(v):
                v = np.float32(0.0)
                bad += 1
            # Rounded twice in float32 like the reference's conv1d (bitwise equal to it).
            e = v + _PRE_NEG * prev
            if not math.isfinite(e):  # |x| near float32's limit: overflow, not audio
                e = np.float32(0.0)
                bad += 1
            ring[(m + j - i) & RING_MASK] = e
            prev = v
        m += stop - i
        i = stop
        if m >= t * HOP + READY_LAG:
            compute_frame(ring, m, t, work, out, col)
            t += 1
            col += 1
    counters[C_SAMPLES] = n + length
    counters[C_PRE] = m
    counters[C_FRAMES] = t
    counters[C_NONFINITE] = bad
    state[_LAST] = prev
    return col - first_col


@nb.njit(**_JIT)
def flush_frames(
    state: np.ndarray, counters: np.ndarray, work: np.ndarray, out: np.ndarray, first_col: int
) -> int:
    """Emit the frames that need the end mirror into ``out[:, first_col:]`` (needs ``m >= 1``).

    Returns the number of frames written.
    """
    ring = state[:_LAST]
    m = counters[C_PRE]
    t = counters[C_FRAMES]
    col = first_col
    while t <= m // HOP:
        compute_frame(ring, m, t, work, out, col)
        t += 1
        col += 1
    counters[C_FRAMES] = t
    return col - first_col


# --- numba's on-disk cache and the tables ----------------------------------------------
# numba keys its cache on this file only, but the kernels freeze the tables of tables.py
# (and the mel filterbank of melbank.py) into the compiled code. A checksum compiled into a
# kernel of its own tells whether the cached code was built from the current tables.

_CHECKED_TABLES = (
    WINDOW_TAPS,
    TWIDDLE1_RE,
    TWIDDLE1_IM,
    TWIDDLE2_RE,
    TWIDDLE2_IM,
    TWIDDLE3_RE,
    TWIDDLE3_IM,
    SPLIT_COS,
    SPLIT_SIN,
    MEL_FRACTION,
)
_CHECKED_SCALARS = np.array([PREEMPHASIS, LOG_OFFSET, NORM_SHIFT, NORM_SCALE], dtype=np.float64)
_CHECKED_INTEGERS = np.concatenate(
    [
        MEL_BOUNDS,
        FFT_PASS_LENGTH,
        FFT_PASS_STRIDE,
        FFT_TWIDDLE_OFFSET,
        np.array([HOP, N_MELS, N_BINS, FRAME_SPAN, FRAME_BACK], dtype=np.int64),
        np.array([RING_SIZE, MEL_BINS_USED, FFT_RADIX2_STRIDE], dtype=np.int64),
    ]
)


def _checksum_numpy() -> int:
    total = np.int64(0)
    with np.errstate(over="ignore"):
        for j, table in enumerate((*_CHECKED_TABLES, _CHECKED_SCALARS, _CHECKED_INTEGERS)):
            bits = table.view(np.int64)
            weights = np.arange(1, bits.shape[0] + 1, dtype=np.int64) + np.int64(j)
            total += np.sum(bits * weights)
    return int(total)


@nb.njit(**_JIT)
def _checksum_bits(bits: np.ndarray, j: int) -> np.int64:
    total = np.int64(0)
    for i in range(bits.shape[0]):
        total += bits[i] * np.int64(i + 1 + j)
    return total


@nb.njit(**_JIT)
def _checksum_compiled() -> int:
    total = np.int64(0)
    total += _checksum_bits(WINDOW_TAPS.view(np.int64), 0)
    total += _checksum_bits(TWIDDLE1_RE.view(np.int64), 1)
    total += _checksum_bits(TWIDDLE1_IM.view(np.int64), 2)
    total += _checksum_bits(TWIDDLE2_RE.view(np.int64), 3)
    total += _checksum_bits(TWIDDLE2_IM.view(np.int64), 4)
    total += _checksum_bits(TWIDDLE3_RE.view(np.int64), 5)
    total += _checksum_bits(TWIDDLE3_IM.view(np.int64), 6)
    total += _checksum_bits(SPLIT_COS.view(np.int64), 7)
    total += _checksum_bits(SPLIT_SIN.view(np.int64), 8)
    total += _checksum_bits(MEL_FRACTION.view(np.int64), 9)
    total += _checksum_bits(_CHECKED_SCALARS.view(np.int64), 10)
    total += _checksum_bits(_CHECKED_INTEGERS, 11)
    return total


# Every kernel, callees before callers (a caller links the code of its callees).
_KERNELS = (
    reflect_index,
    _radix4_pass,
    _radix2_last_pass,
    fft_half,
    log_positive,
    compute_frame,
    push_samples,
    flush_frames,
    _checksum_bits,
    _checksum_compiled,
)


def refresh_stale_cache() -> bool:
    """Recompile the kernels if numba's on-disk cache was built from other tables.

    Returns True when it had to (e.g. after an edit of ``tables.py`` or ``melbank.py``,
    which numba's cache does not notice). Called by ``soundwatch.dsp.warmup()``.
    """
    if int(_checksum_compiled()) == _checksum_numpy():
        return False
    for kernel in _KERNELS:
        kernel._cache.flush()  # drop the stale cache files so nothing reloads them
    for kernel in _KERNELS:
        if kernel.signatures:
            kernel.recompile()
    if int(_checksum_compiled()) != _checksum_numpy():
        raise RuntimeError("numba kernels still disagree with the frontend tables")
    return True

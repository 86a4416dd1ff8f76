"""The log-mel frontend: parity with the reference, streaming == offline, defined bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import soundwatch.dsp as dsp
from benchmarks.logmel_batch import StreamingLogMelBatch
from soundwatch.dsp.kernels import log_positive
from soundwatch.dsp.melbank import kaldi_mel_banks, mel_segments
from soundwatch.errors import SoundwatchError

GOLDEN_NAMES = ["speech_10s", "noise_3s", "chirp_odd", "short_1000", "silence_1s"]


@pytest.fixture(scope="module", autouse=True)
def _compiled() -> None:
    dsp.warmup()


def torchaudio_mel_banks(dtype: torch.dtype) -> torch.Tensor:
    """``get_mel_banks`` as the reference calls it, computed in ``dtype``."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # get_mel_banks computes in the default dtype
    try:
        banks, _ = torchaudio.compliance.kaldi.get_mel_banks(
            128, 1024, 32000, 0.0, 15000.0, 100.0, -500.0, 1.0
        )
    finally:
        torch.set_default_dtype(default)
    return banks


def torch_reference(wave: np.ndarray) -> np.ndarray:
    """The published EfficientAT frontend in torch, as the test oracle.

    Pre-emphasis and window are the reference's float32 values; the filterbank, STFT, mel
    and log are float64, so that float32 rounding in the reference's FFT (up to 1.4e-4 on pure
    tones) and in its filterbank weights (up to 1.3e-5 per weight, which moves a pure tone on
    a filter's flank by up to ~2e-4) does not blur the comparison.
    """
    x = torch.from_numpy(wave)[None, None]
    x = torch.nn.functional.conv1d(x, torch.tensor([[[-0.97, 1.0]]]))[:, 0].double()
    spec = torch.stft(
        x,
        1024,
        hop_length=320,
        win_length=800,
        window=torch.hann_window(800, periodic=False).double(),
        center=True,
        return_complex=True,
    )
    power = spec.abs() ** 2
    banks = torchaudio_mel_banks(torch.float64)
    mel = torch.matmul(torch.nn.functional.pad(banks, (0, 1)), power)
    return (((mel + 1e-5).log() + 4.5) / 5.0)[0].float().numpy()


def numpy_reflect_reference(wave: np.ndarray) -> np.ndarray:
    """The same recipe in numpy float64 with ``np.pad(mode="reflect")``, defined for n >= 2."""
    x = wave.astype(np.float32)
    pre = (x[1:] + np.float32(-0.97) * x[:-1]).astype(np.float64)  # float32 like conv1d
    padded = np.pad(pre, 512, mode="reflect")
    frames = 1 + (len(x) - 1) // 320
    window = np.zeros(1024)
    k = np.arange(800, dtype=np.float32)
    hann = np.float32(0.5) - np.float32(0.5) * np.cos(
        (k * np.float32(2 * np.pi / 799)).astype(np.float64)
    ).astype(np.float32)
    window[112:912] = hann
    idx = np.arange(frames)[:, None] * 320 + np.arange(1024)[None, :]
    power = np.abs(np.fft.rfft(padded[idx] * window, axis=1)) ** 2
    mel = kaldi_mel_banks(128, 1024, 32000, 0.0, 15000.0) @ power.T
    return ((np.log(mel + 1e-5) + 4.5) / 5.0).astype(np.float32)


def test_wave(n: int, seed: int = 0) -> np.ndarray:
    """Noise plus a few tones, float32, roughly speech level."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 32000.0
    tones = sum(
        rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * rng.uniform(50, 15000) * t + rng.uniform(0, 6))
        for _ in range(3)
    )
    return (tones + rng.uniform(0.001, 0.1) * rng.standard_normal(n)).astype(np.float32)


test_wave.__test__ = False  # a helper, not a test


def stream_in_chunks(stream: dsp.StreamingLogMel, wave: np.ndarray, sizes: list[int]) -> list:
    """Push ``wave`` in chunks cycling through ``sizes``; return every push's output and flush."""
    outputs = []
    start, i = 0, 0
    while start < len(wave):
        size = sizes[i % len(sizes)]
        before = stream.frames_emitted
        frames = stream.push(wave[start : start + size])
        start += size
        i += 1
        assert frames.shape == (128, stream.frames_emitted - before)
        assert stream.samples_pushed == min(start, len(wave))
        outputs.append(frames)
    outputs.append(stream.flush())
    return outputs


# --- parity ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_logmel_matches_golden(shared, name: str) -> None:
    golden = np.load(shared("golden/frontend.npz"))
    wave, expected = golden[f"wave_{name}"], golden[f"mel_{name}"]
    mel = dsp.logmel(wave)
    assert mel.dtype == np.float32
    assert mel.shape == (128, 1 + (len(wave) - 1) // 320) == expected.shape
    assert np.abs(mel - expected).max() <= 1e-4


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_streaming_matches_golden(shared, name: str) -> None:
    golden = np.load(shared("golden/frontend.npz"))
    wave, expected = golden[f"wave_{name}"], golden[f"mel_{name}"]
    mel = np.concatenate(stream_in_chunks(dsp.StreamingLogMel(), wave, [320, 1, 5000, 77]), 1)
    assert mel.shape == expected.shape
    assert np.abs(mel - expected).max() <= 1e-4


@pytest.mark.parametrize("n", [514, 515, 719, 720, 721, 1023, 1024, 1025, 1344, 4801, 32000])
def test_logmel_matches_torch_reference_at_frame_boundaries(n: int) -> None:
    wave = test_wave(n, seed=n)
    np.testing.assert_allclose(dsp.logmel(wave), torch_reference(wave), atol=1e-5, rtol=0)


@pytest.mark.parametrize("n", [2, 3, 4, 10, 100, 320, 321, 399, 400, 401, 402, 512, 513, 514, 700])
def test_short_inputs_use_repeated_reflection(n: int) -> None:
    """Below 514 samples the reference fails; we pad like ``np.pad(mode="reflect")``."""
    wave = test_wave(n, seed=n)
    mel = dsp.logmel(wave)
    assert mel.shape == (128, 1 + (n - 1) // 320)
    np.testing.assert_allclose(mel, numpy_reflect_reference(wave), atol=1e-5, rtol=0)
    streamed = np.concatenate(stream_in_chunks(dsp.StreamingLogMel(), wave, [1, 7]), 1)
    np.testing.assert_allclose(streamed, mel, atol=1e-5, rtol=0)


def test_mel_filterbank_matches_torchaudio() -> None:
    ours = kaldi_mel_banks(128, 1024, 32000, 0.0, 15000.0)
    assert ours.shape == (128, 513)
    assert np.all(ours[:, 512] == 0.0)
    exact = torchaudio_mel_banks(torch.float64).numpy()
    np.testing.assert_allclose(ours[:, :512], exact, atol=1e-12, rtol=0)
    # The reference computes it in float32: the same weights up to float32 rounding.
    as_in_reference = torchaudio_mel_banks(torch.float32).numpy()
    np.testing.assert_allclose(ours[:, :512], as_in_reference, atol=2e-5, rtol=0)


@pytest.mark.parametrize(("n_mels", "fmin", "fmax"), [(128, 0.0, 15000.0), (64, 50.0, 8000.0)])
def test_mel_segments_equal_dense_filterbank(n_mels: int, fmin: float, fmax: float) -> None:
    dense = kaldi_mel_banks(n_mels, 1024, 32000, fmin, fmax)
    segments = mel_segments(n_mels, 1024, 32000, fmin, fmax)
    np.testing.assert_allclose(segments.to_dense(), dense, atol=1e-12, rtol=0)
    power = np.random.default_rng(0).random(513)
    np.testing.assert_allclose(segments.apply(power), dense @ power, rtol=1e-12)


# --- streaming == offline --------------------------------------------------------------

chunk_size = st.one_of(st.integers(1, 4), st.integers(1, 400), st.integers(1, 20000))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 30000),
    seed=st.integers(0, 2**16),
    sizes=st.lists(chunk_size, min_size=1, max_size=12),
)
def test_streaming_equals_offline_for_any_chunking(n: int, seed: int, sizes: list[int]) -> None:
    wave = test_wave(n, seed)
    stream = dsp.StreamingLogMel()
    streamed = np.concatenate(stream_in_chunks(stream, wave, sizes), axis=1)
    offline = dsp.logmel(wave)
    assert streamed.shape == offline.shape
    np.testing.assert_allclose(streamed, offline, atol=1e-5, rtol=0)
    assert stream.frames_emitted == dsp.frames_for_samples(n)


def test_one_sample_pushes_equal_offline() -> None:
    wave = test_wave(3000, seed=3)
    streamed = np.concatenate(stream_in_chunks(dsp.StreamingLogMel(), wave, [1]), axis=1)
    np.testing.assert_allclose(streamed, dsp.logmel(wave), atol=1e-5, rtol=0)


def test_frames_come_out_as_soon_as_their_window_is_complete() -> None:
    """Frame i (centred at sample i*HOP) is returned by the push of sample
    i*HOP + LOOKAHEAD_SAMPLES - 1, never later, and every frame exactly once."""
    wave = test_wave(3 * 320 + dsp.LOOKAHEAD_SAMPLES + 10, seed=4)
    stream = dsp.StreamingLogMel()
    arrivals = []
    for index in range(len(wave)):
        frames = stream.push(wave[index : index + 1])
        arrivals += [index] * frames.shape[1]
    assert arrivals == [i * dsp.HOP + dsp.LOOKAHEAD_SAMPLES - 1 for i in range(len(arrivals))]
    assert len(arrivals) == 4
    assert stream.flush().shape[1] == dsp.frames_for_samples(len(wave)) - 4


def test_state_stays_bounded_over_a_long_stream() -> None:
    stream = dsp.StreamingLogMel()
    sizes_before = [a.nbytes for a in vars(stream).values() if isinstance(a, np.ndarray)]
    wave = test_wave(32000 * 20, seed=5)
    for start in range(0, len(wave), 32000):
        assert stream.push(wave[start : start + 32000]).shape[1] in (99, 100, 101)
    sizes_after = [a.nbytes for a in vars(stream).values() if isinstance(a, np.ndarray)]
    assert sizes_after == sizes_before
    assert sum(sizes_after) < 64_000


# --- batch form (benchmarks/logmel_batch.py, measured by benchmarks/frontend.py) --------


def test_batch_equals_separate_streams() -> None:
    waves = np.stack([test_wave(9000, seed=s) for s in range(5)])
    waves[2, 100] = np.nan
    batch = StreamingLogMelBatch(5)
    streams = [dsp.StreamingLogMel() for _ in range(5)]
    got, expected = [], []
    for start, size in [(0, 1), (1, 320), (321, 4000), (4321, 4679)]:
        got.append(batch.push(waves[:, start : start + size]))
        rows = [s.push(w[start : start + size]) for s, w in zip(streams, waves, strict=True)]
        expected.append(np.stack(rows))
    got.append(batch.flush())
    expected.append(np.stack([s.flush() for s in streams]))
    np.testing.assert_array_equal(np.concatenate(got, 2), np.concatenate(expected, 2))
    assert batch.frames_emitted == dsp.frames_for_samples(9000)
    assert batch.nonfinite_samples.tolist() == [0, 0, 1, 0, 0]
    with pytest.raises(SoundwatchError, match="rows"):
        StreamingLogMelBatch(5).push(waves[:3])


# --- bad input and lifecycle -----------------------------------------------------------


def test_too_short_for_logmel_raises() -> None:
    for n in (0, 1):
        with pytest.raises(SoundwatchError, match="at least 2"):
            dsp.logmel(np.zeros(n, dtype=np.float32))


def test_stream_shorter_than_two_samples_flushes_empty() -> None:
    for n in (0, 1):
        stream = dsp.StreamingLogMel()
        assert stream.push(np.zeros(n, dtype=np.float32)).shape == (128, 0)
        assert stream.flush().shape == (128, 0)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([0.0] * 1000, "numpy array"),
        (np.zeros((2, 1000), dtype=np.float32), "1-D mono"),
        (np.zeros(1000, dtype=np.int16), "32768"),
        (np.zeros(1000, dtype=np.complex64), "real float"),
        (np.zeros(1000, dtype=bool), "real float"),
    ],
)
def test_bad_input_raises_clear_error(bad: object, message: str) -> None:
    with pytest.raises(SoundwatchError, match=message):
        dsp.logmel(bad)  # type: ignore[arg-type]
    with pytest.raises(SoundwatchError, match=message):
        dsp.StreamingLogMel().push(bad)  # type: ignore[arg-type]


def test_float64_and_non_contiguous_input_are_converted() -> None:
    wave = test_wave(6000, seed=6)
    assert np.array_equal(dsp.logmel(wave.astype(np.float64)), dsp.logmel(wave))
    strided = np.repeat(wave, 2)[::2]
    assert not strided.flags.c_contiguous
    assert np.array_equal(dsp.logmel(strided), dsp.logmel(wave))


def test_logmel_rejects_non_finite_samples() -> None:
    wave = test_wave(2000)
    wave[[5, 700]] = [np.nan, np.inf]
    with pytest.raises(SoundwatchError, match="2 non-finite"):
        dsp.logmel(wave)


def test_streaming_zeroes_and_counts_non_finite_samples() -> None:
    wave = test_wave(5000, seed=7)
    dirty = wave.copy()
    dirty[[0, 10, 2500, 4999]] = [np.nan, np.inf, -np.inf, np.nan]
    clean = dirty.copy()
    clean[~np.isfinite(clean)] = 0.0
    stream = dsp.StreamingLogMel()
    mel = np.concatenate(stream_in_chunks(stream, dirty, [333]), axis=1)
    assert stream.nonfinite_samples == 4
    assert np.isfinite(mel).all()
    np.testing.assert_array_equal(mel, dsp.logmel(clean))


def test_streaming_counts_overflowing_samples() -> None:
    wave = test_wave(2000, seed=8)
    wave[1000:1002] = [3e38, -3e38]  # finite, but pre-emphasis overflows float32
    stream = dsp.StreamingLogMel()
    mel = np.concatenate(stream_in_chunks(stream, wave, [500]), axis=1)
    assert np.isfinite(mel).all()
    assert stream.nonfinite_samples >= 1


def test_push_after_flush_errors_and_reset_starts_over() -> None:
    wave = test_wave(5000, seed=9)
    stream = dsp.StreamingLogMel()
    stream.push(test_wave(1234, seed=10))
    stream.flush()
    assert stream.ended
    with pytest.raises(SoundwatchError, match="reset"):
        stream.push(wave)
    with pytest.raises(SoundwatchError, match="already"):
        stream.flush()
    stream.reset()
    assert (stream.frames_emitted, stream.samples_pushed, stream.ended) == (0, 0, False)
    mel = np.concatenate([stream.push(wave), stream.flush()], axis=1)
    np.testing.assert_array_equal(mel, dsp.logmel(wave))


def test_reset_mid_stream_forgets_everything() -> None:
    stream = dsp.StreamingLogMel()
    noisy = test_wave(4000, seed=11)
    noisy[3] = np.nan
    stream.push(noisy)
    stream.reset()
    assert stream.nonfinite_samples == 0
    wave = test_wave(4000, seed=12)
    mel = np.concatenate([stream.push(wave), stream.flush()], axis=1)
    np.testing.assert_array_equal(mel, dsp.logmel(wave))


def test_vectorised_log_matches_numpy() -> None:
    values = np.concatenate([np.geomspace(1e-5, 1e80, 4000), 1 + np.linspace(-0.5, 1, 999)])
    values = np.concatenate([values, [np.sqrt(2), np.sqrt(0.5), 1e-5, 2.0, 1.0]])
    result = np.empty_like(values)
    log_positive(values, result)
    np.testing.assert_allclose(result, np.log(values), rtol=0, atol=5e-11)


def _python(script: str, **env: str) -> str:
    """Run ``script`` in a fresh interpreter (its own numba state); its stdout."""
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_warmup_compiles_every_kernel_a_stream_uses() -> None:
    """After ``warmup()`` no push, flush or ``logmel`` call compiles anything."""
    script = """
import numpy as np
import soundwatch.dsp as dsp
from soundwatch.dsp import kernels

def compiled():
    return {k.__name__: len(k.signatures) for k in kernels._KERNELS}

dsp.warmup()
before = compiled()
wave = np.random.default_rng(0).standard_normal(40000).astype(np.float32)
stream = dsp.StreamingLogMel()
for size in (1, 319, 320, 5000, 34360):
    stream.push(wave[:size])
stream.flush()
dsp.logmel(wave)
assert before["push_samples"] and before["flush_frames"], before  # the entry points
assert compiled() == before, (before, compiled())
print("ok")
"""
    assert _python(script).strip() == "ok"


def test_a_numba_cache_built_from_other_tables_is_rebuilt(tmp_path) -> None:
    """numba's cache only watches kernels.py: kernels cached with other tables (an edit of
    tables.py) are detected by ``warmup()`` and recompiled, and then compute the right mel."""
    cache = {"NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    stale = """
import soundwatch.dsp as dsp
dsp.tables.WINDOW_TAPS *= 0.5  # before the first compile: as if tables.py had been edited
dsp.warmup()
assert not dsp.kernels.refresh_stale_cache()  # consistent with its own tables
"""
    _python(stale, **cache)
    check = """
import numpy as np
import soundwatch.dsp as dsp
from soundwatch.dsp.kernels import refresh_stale_cache
assert refresh_stale_cache() is True, "the stale cache was not noticed"
assert refresh_stale_cache() is False
wave = np.random.default_rng(0).standard_normal(9000).astype(np.float32)
np.save(__import__("sys").argv[1], dsp.logmel(wave))
"""
    out = tmp_path / "mel.npy"
    _python(check.replace('__import__("sys").argv[1]', repr(str(out))), **cache)
    wave = np.random.default_rng(0).standard_normal(9000).astype(np.float32)
    np.testing.assert_array_equal(np.load(out), dsp.logmel(wave))

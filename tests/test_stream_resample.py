"""Streaming resampler == torchaudio.functional.resample for any chunking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio
from hypothesis import given, settings
from hypothesis import strategies as st

from soundwatch.stream.resample import StreamingResampler, downmix

RATES = [8000, 16000, 22050, 44100, 48000, 32000]


def _offline(x: np.ndarray, rate: int) -> np.ndarray:
    if rate == 32000:
        return x
    return torchaudio.functional.resample(torch.from_numpy(x), rate, 32000).numpy()


def _streamed(x: np.ndarray, rate: int, sizes: list[int]) -> np.ndarray:
    resampler = StreamingResampler(rate)
    outs = []
    position = 0
    k = 0
    while position < len(x):
        size = sizes[k % len(sizes)]
        k += 1
        outs.append(resampler.process(x[position : position + size]))
        position += size
    outs.append(resampler.flush())
    return np.concatenate(outs)


@settings(max_examples=12, deadline=None)
@given(
    rate=st.sampled_from(RATES),
    seconds=st.floats(0.001, 0.6),
    sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=20),
    seed=st.integers(0, 2**32 - 1),
)
def test_streaming_equals_offline_for_random_chunkings(rate, seconds, sizes, seed):
    x = np.random.default_rng(seed).uniform(-1, 1, int(seconds * rate)).astype(np.float32)
    expected = _offline(x, rate)
    got = _streamed(x, rate, sizes)
    assert got.dtype == np.float32
    assert len(got) == len(expected)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("rate", RATES)
def test_every_rate_with_single_sample_and_large_chunks(rate):
    x = np.sin(np.arange(rate // 4) * 0.05).astype(np.float32)
    expected = _offline(x, rate)
    np.testing.assert_allclose(_streamed(x, rate, [1, 2, 3]), expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(_streamed(x, rate, [len(x)]), expected, atol=1e-5, rtol=0)


def test_output_is_final_before_flush_and_reset_starts_over():
    rate = 44100
    x = np.random.default_rng(0).uniform(-1, 1, rate).astype(np.float32)
    expected = _offline(x, rate)
    resampler = StreamingResampler(rate)
    early = resampler.process(x)
    assert 0 < len(early) < len(expected)
    np.testing.assert_allclose(early, expected[: len(early)], atol=1e-5, rtol=0)
    resampler.flush()
    assert resampler.samples_in == 0 and resampler.samples_out == 0
    again = np.concatenate([resampler.process(x), resampler.flush()])
    np.testing.assert_allclose(again, expected, atol=1e-5, rtol=0)


def test_passthrough_returns_input_unchanged():
    x = np.arange(100, dtype=np.float32)
    resampler = StreamingResampler(32000)
    np.testing.assert_array_equal(resampler.process(x), x)
    assert len(resampler.flush()) == 0


def test_downmix_is_channel_mean():
    frames = np.array([[1.0, 3.0], [0.5, -0.5]], dtype=np.float32)
    np.testing.assert_array_equal(downmix(frames), np.array([2.0, 0.0], dtype=np.float32))
    assert downmix(frames[:, :1]).flags.c_contiguous
    with pytest.raises(ValueError):
        StreamingResampler(0)

"""Streams fed with mel frames (``Pipeline.add_stream``): the same windows as audio gives.

A fake forward pass (each window's mean and its first frame's values) stands in for the
model, so these run in a second: the real model is in tests/test_edge.py.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import soundfile

from soundwatch.dsp import StreamingLogMel
from soundwatch.edge.server import EdgeSource
from soundwatch.errors import SoundwatchError
from soundwatch.pipeline import Collector, Pipeline
from soundwatch.stream import open_source


def fake_infer(mels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """probs: the window's mean and size; embedding: its first and last frames."""
    probs = np.stack([mels.mean(axis=(1, 2)), np.full(len(mels), mels.shape[2])], axis=1)
    return probs.astype(np.float32), np.concatenate([mels[:, :, 0], mels[:, :, -1]], axis=1)


def fed(stream_id: str) -> EdgeSource:
    """A stream fed from outside, as the edge listener adds them (never read)."""
    return EdgeSource(stream_id, "node", stream_id, waits=True, listener="test")


def _audio(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(3)
    t = np.arange(int(seconds * 32000)) / 32000
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.normal(size=t.size)).astype(np.float32)


def _run_file(path: str) -> list:
    collector = Collector()
    source = open_source("a", f"file:{path}", pace="fast")
    Pipeline([source], fake_infer, [collector], window_s=1.0, hop_s=0.5).run()
    return collector.results


def test_fed_frames_give_the_windows_audio_gives(tmp_path) -> None:
    audio = _audio(3.37)
    path = tmp_path / "a.wav"
    soundfile.write(path, audio, 32000, subtype="FLOAT")
    expected = _run_file(str(path))

    frontend = StreamingLogMel()
    frames = np.concatenate([frontend.push(audio), frontend.flush()], axis=1)
    collector = Collector()
    pipeline = Pipeline([], fake_infer, [collector], window_s=1.0, hop_s=0.5, open_ended=True)
    runner = threading.Thread(target=pipeline.run)
    runner.start()
    try:
        state = pipeline.add_stream(fed("a"))
        assert state is not None
        with pytest.raises(SoundwatchError, match="already running"):
            pipeline.add_stream(fed("a"))
        for start in range(0, frames.shape[1], 7):  # uneven batches
            chunk = frames[:, start : start + 7]
            assert pipeline.feed_stream(state, chunk, 1000.0 + start / 100, new_segment=False)
        pipeline.end_stream(state)
        again = pipeline.add_stream(fed("a"))  # an ended stream's id may return
        assert again is not None and again is not state
        pipeline.feed_stream(again, frames[:, :150], 2000.0, new_segment=False)
    finally:
        pipeline.stop()
        runner.join(timeout=30)
    assert not runner.is_alive()
    assert pipeline.add_stream(fed("b")) is None  # stopped: no more streams

    first = [r for r in collector.results if r.t_start < 2000.0]
    assert [(r.start_frame, r.stop_frame, r.final) for r in first] == [
        (r.start_frame, r.stop_frame, r.final) for r in expected
    ]
    for got, want in zip(first, expected, strict=True):
        np.testing.assert_allclose(got.probs, want.probs, rtol=1e-6)
        np.testing.assert_allclose(got.embedding, want.embedding, rtol=1e-6)
        assert got.t_start == pytest.approx(1000.0 + got.start_frame / 100)
    # the returning stream's tail was tagged when the pipeline stopped
    second = [r for r in collector.results if r.t_start >= 2000.0]
    assert [(r.start_frame, r.stop_frame) for r in second] == [(0, 100), (50, 150)]


def test_new_segment_restarts_the_windows() -> None:
    frames = np.random.default_rng(1).normal(-4, 1, (128, 260)).astype(np.float32)
    collector = Collector()
    pipeline = Pipeline([], fake_infer, [collector], window_s=1.0, hop_s=0.5, open_ended=True)
    runner = threading.Thread(target=pipeline.run)
    runner.start()
    try:
        state = pipeline.add_stream(fed("a"))
        assert state is not None
        pipeline.feed_stream(state, frames[:, :130], 10.0, new_segment=False)
        pipeline.feed_stream(state, frames[:, 130:], 20.0, new_segment=True)  # after a gap
        pipeline.end_stream(state)
    finally:
        pipeline.stop()
        runner.join(timeout=30)
    spans = [(r.t_start, r.t_end, r.final) for r in collector.results]
    assert spans == [
        (10.0, 11.0, False),
        (10.3, 11.3, True),  # the tail of the first segment: no window spans the gap
        (20.0, 21.0, False),
        (20.3, 21.3, True),
    ]
    assert state.counters.resyncs == 1


@pytest.mark.parametrize(
    ("listen", "warned"), [("tcp://127.0.0.1:0", False), ("tcp://0.0.0.0:0", True)]
)
def test_a_listener_beyond_loopback_without_curve_is_warned_about(
    listen: str, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    from soundwatch.edge.server import EdgeServer

    pipeline = Pipeline([], fake_infer, [], window_s=1.0, hop_s=0.5, open_ended=True)
    with caplog.at_level("WARNING", logger="soundwatch.edge.server"), EdgeServer(listen, pipeline):
        pass
    assert any("no CURVE keys" in r.getMessage() for r in caplog.records) is warned

"""Faults of the model at the pipeline level, without a model: a forward pass that raises
(survived and counted; repeated failure ends the run), a forward pass that hangs (noticed
by the watchdog; the run ends past the deadline) and inference slowed for a while (live
streams drop, counted, and recover by themselves). Each test passes its own faulty infer
callable: the runtime has no fault switch."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
import pytest
from test_pipeline_flow import BLOCK, ScriptedSource, wait_until, zeros_infer

from soundwatch.errors import SoundwatchError
from soundwatch.pipeline import Collector, Pipeline
from soundwatch.stream import AudioBlock, Source, SourceStats


class FailOnce:
    """Fails its ``fail_at``-th forward pass (1-based) once, remembering that batch's size."""

    def __init__(self, fail_at: int) -> None:
        self.fail_at = fail_at
        self.calls = 0
        self.failed_windows = 0

    def __call__(self, mels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        if self.calls == self.fail_at:
            self.failed_windows = len(mels)
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return zeros_infer(mels)


def test_one_inference_failure_is_survived_counted_and_the_streams_go_on(caplog) -> None:
    """The third forward pass raises: its windows are lost and counted per stream, the
    failure is logged with its traceback and counted, and every other window of every
    stream is still delivered, up to each stream's last."""
    infer = FailOnce(fail_at=3)
    sources = [ScriptedSource(name, blocks=60, waits=True) for name in ("a", "b", "c")]
    collector = Collector()
    pipeline = Pipeline(sources, infer, [collector], window_s=1.0, hop_s=0.5, max_batch=4)
    with caplog.at_level(logging.ERROR, logger="soundwatch.pipeline"):
        pipeline.run()  # no error: one failure does not end the run
    assert not pipeline.errors
    assert pipeline.fault_counters() == {
        "inference_failures": 1,
        "inference_stalls": 0,
        "inference_stalled": 0,
    }
    windows_per_stream = 11  # 6 s: 1 s windows every 0.5 s
    failed = 0
    for state in pipeline.streams:
        delivered = [r for r in collector.results if r.stream == state.id]
        counters = state.report().counters
        assert counters["windows_failed"] + len(delivered) == windows_per_stream, state.id
        assert counters["windows_tagged"] == len(delivered)
        assert delivered[-1].start_frame == 500  # windows kept coming, to the last
        failed += counters["windows_failed"]
    assert failed == infer.failed_windows > 0
    assert infer.calls > 3
    failure = [r for r in caplog.records if "forward pass failed" in r.getMessage()]
    assert len(failure) == 1 and failure[0].exc_info is not None


class Stuck:
    """Forward passes hang on ``release`` (from the ``hang_at``-th on) until it is set."""

    def __init__(self, hang_at: int = 1) -> None:
        self.release = threading.Event()
        self.hang_at = hang_at
        self.calls = 0
        self.hanging = threading.Event()

    def __call__(self, mels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        if self.calls >= self.hang_at:
            self.hanging.set()
            self.release.wait()
        return zeros_infer(mels)


def test_a_stalled_forward_pass_is_reported_and_the_run_goes_on_when_it_returns(caplog) -> None:
    """A pass hangs past the timeout: logged, counted, flagged while it lasts; the live
    stream's capture goes on and drops its oldest windows; when the pass returns the flag
    clears and the run finishes without error."""
    stuck = Stuck()
    live = ScriptedSource("mic", blocks=100)
    pipeline = Pipeline(
        [live],
        stuck,
        [Collector()],
        window_s=1.0,
        hop_s=0.1,
        max_pending_windows=4,
        inference_timeout=0.2,
        inference_deadline=600.0,
    )
    try:
        with caplog.at_level(logging.WARNING, logger="soundwatch.pipeline"):
            pipeline.start()
            wait_until(lambda: pipeline.faults.inference_stalled == 1)
            assert pipeline.faults.inference_stalls == 1
            assert "inference is stalled" in caplog.text
            wait_until(lambda: live.ended)  # the capture read all its audio meanwhile
            wait_until(lambda: pipeline.streams[0].counters.windows_dropped > 0)
            stuck.release.set()
            assert pipeline.wait(timeout=60)
    finally:
        stuck.release.set()
    assert not pipeline.errors
    assert pipeline.faults.inference_stalled == 0
    assert "the stalled forward pass returned" in caplog.text


def test_a_forward_pass_that_never_returns_ends_the_run_with_a_clear_error() -> None:
    """Past the deadline the watchdog ends the run naming the hang, instead of a silent
    process; a live stream's capture read on (dropping, counted) and a waiting stream held
    at a full queue is let go."""
    stuck = Stuck()
    live = ScriptedSource("mic", blocks=100)
    held = ScriptedSource("file", blocks=10_000, waits=True)
    pipeline = Pipeline(
        [live, held],
        stuck,
        [],
        window_s=1.0,
        hop_s=0.1,
        max_pending_windows=4,
        inference_timeout=0.2,
        inference_deadline=1.0,
    )
    try:
        with pytest.raises(
            SoundwatchError,
            match=r"a forward pass has not returned after \d+\.\d s \(deadline 1 s\): the model "
            "or its device hangs",
        ):
            pipeline.run(shutdown_timeout=30)
        assert pipeline.faults.inference_stalls == 1
        mic = pipeline.streams[0]
        assert live.sent == 100  # the capture never waited for the model
        assert mic.counters.windows_dropped > 0
        assert held.stopped and live.stopped
    finally:
        stuck.release.set()


class PacedSource(Source):
    """A live source that makes audio ``speed`` times faster than real time, stamped as
    audio time: a microphone whose blocks arrive on the clock, not when read."""

    def __init__(self, stream_id: str, speed: float) -> None:
        self.id = stream_id
        self.native_rate = 32000
        self.channels = 1
        self.speed = speed
        self.sent = 0
        self.stopped = False
        self._t0 = time.monotonic()
        self._rng = np.random.default_rng(len(stream_id))

    def start(self) -> None:
        self._t0 = time.monotonic()

    def read(self, timeout: float) -> AudioBlock | None:
        due = int((time.monotonic() - self._t0) * self.speed / (BLOCK / 32000))
        if self.sent >= due:
            return None
        samples = (0.1 * self._rng.standard_normal(BLOCK)).astype(np.float32)
        block = AudioBlock(samples, 1000.0 + self.sent * 0.1, time.monotonic())
        self.sent += 1
        return block

    @property
    def ended(self) -> bool:
        return False

    def stats(self) -> SourceStats:
        return SourceStats(samples_in=self.sent * BLOCK)

    def stop(self) -> None:
        self.stopped = True

    def describe(self) -> dict[str, Any]:
        return {"kind": "paced"}


class SlowThenFast:
    """Each forward pass takes ``slow_s`` until ``fast`` is set, then none; notes whether
    the sources read on while a pass was running."""

    def __init__(self, sources: list[PacedSource], slow_s: float) -> None:
        self.sources = sources
        self.slow_s = slow_s
        self.fast = threading.Event()
        self.read_during_pass = False

    def __call__(self, mels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        before = [s.sent for s in self.sources]
        self.fast.wait(self.slow_s)  # the fault: a slow model, until it is lifted
        if not self.fast.is_set() and [s.sent for s in self.sources] != before:
            self.read_during_pass = True
        return zeros_infer(mels)


def test_backpressure_drops_while_inference_is_slow_and_recovers_by_itself() -> None:
    """Two live streams at 2x real time (4 windows/s each) against a model that manages 2
    passes of one window a second: they drop their oldest windows (counted) while the
    capture reads on; once the model is fast again, windows are delivered again and no
    more are dropped (each stream may hold 2 s of windows: slack for a loaded machine)."""
    sources = [PacedSource("a", speed=2.0), PacedSource("b", speed=2.0)]
    infer = SlowThenFast(sources, slow_s=0.5)
    collector = Collector()
    pipeline = Pipeline(
        sources, infer, [collector], window_s=1.0, hop_s=0.5, max_batch=1, max_pending_windows=8
    )
    pipeline.start()
    try:
        states = pipeline.streams
        wait_until(lambda: all(s.counters.windows_dropped > 2 for s in states))
        assert infer.read_during_pass  # the capture never waited for the slow model
        infer.fast.set()
        # Once the backlog (eight windows per stream) is drained, nothing more is dropped.
        delivered = {s.id: s.counters.windows_tagged for s in states}
        wait_until(lambda: all(s.counters.windows_tagged >= delivered[s.id] + 8 for s in states))
        dropped = {s.id: s.counters.windows_dropped for s in states}
        tagged = {s.id: s.counters.windows_tagged for s in states}
        wait_until(lambda: all(s.counters.windows_tagged >= tagged[s.id] + 8 for s in states))
        assert {s.id: s.counters.windows_dropped for s in states} == dropped
    finally:
        pipeline.stop()
        assert pipeline.wait(timeout=30)
    assert not pipeline.errors
    for state in pipeline.streams:
        starts = [r.start_frame for r in collector.results if r.stream == state.id]
        assert starts == sorted(starts) and len(starts) == state.counters.windows_tagged

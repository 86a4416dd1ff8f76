"""Flow control and failures of the pipeline, without a model: per-stream backpressure,
sources that wait versus live ones, stream ends reported as they happen, errors in
streams, inference and handlers, and shutdown that cannot hang silently."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from soundwatch.dsp.windows import MelWindow
from soundwatch.errors import SoundwatchError
from soundwatch.pipeline import (
    MAX_INFERENCE_FAILURES,
    Collector,
    Pipeline,
    StreamState,
    WindowQueue,
    _Pending,
    _StreamEnd,
    pending_bound,
)
from soundwatch.results import EVENTS, TAGS, WindowResult
from soundwatch.stream import AudioBlock, Source, SourceStats

BLOCK = 3200  # 0.1 s at 32 kHz


class ScriptedSource(Source):
    """``blocks`` blocks of noise delivered as fast as they are read; it can be told to
    wait instead of dropping, to fail after some blocks, or to hang in ``read``."""

    def __init__(
        self,
        stream_id: str,
        blocks: int,
        *,
        waits: bool = False,
        fail_after: int | None = None,
        hang: threading.Event | None = None,
        fail_start: bool = False,
    ) -> None:
        self.id = stream_id
        self.native_rate = 32000
        self.channels = 1
        self.blocks = blocks
        self.waits = waits
        self.fail_after = fail_after
        self.hang = hang
        self.fail_start = fail_start
        self.sent = 0
        self.started = False
        self.stopped = False
        self._rng = np.random.default_rng(len(stream_id))

    @property
    def waits_when_behind(self) -> bool:
        return self.waits

    def start(self) -> None:
        if self.fail_start:
            raise SoundwatchError(f"cannot open {self.id}")
        self.started = True

    def read(self, timeout: float) -> AudioBlock | None:
        if self.hang is not None:
            self.hang.wait()  # a device that never answers
        if self.fail_after is not None and self.sent >= self.fail_after:
            raise OSError(f"{self.id}: device unplugged")
        if self.sent >= self.blocks:
            return None
        samples = (0.1 * self._rng.standard_normal(BLOCK)).astype(np.float32)
        block = AudioBlock(samples, 1000.0 + self.sent * 0.1, time.monotonic())
        self.sent += 1
        return block

    @property
    def ended(self) -> bool:
        return self.sent >= self.blocks

    def stats(self) -> SourceStats:
        return SourceStats(samples_in=self.sent * BLOCK)

    def stop(self) -> None:
        self.stopped = True

    def describe(self) -> dict[str, Any]:
        return {"kind": "scripted"}


def zeros_infer(mels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((len(mels), 527), np.float32), np.zeros((len(mels), 8), np.float32)


class Gate:
    """An inference function that blocks until opened: inference 'falls behind'."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.calls = 0

    def __call__(self, mels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        self.opened.wait()
        return zeros_infer(mels)


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def pending(state: StreamState, start: int, purposes=frozenset({TAGS})) -> _Pending:
    mel = np.zeros((128, 10), np.float32)
    return _Pending(state, MelWindow(start, start + 10, mel), 0.0, 0.0, purposes)


# --- the queue -------------------------------------------------------------------------------
def test_queue_drops_only_the_full_streams_own_oldest_windows() -> None:
    live = StreamState(ScriptedSource("live", 0), {frozenset({TAGS}): (0.1, 0.1)})
    other = StreamState(ScriptedSource("other", 0), {frozenset({TAGS}): (0.1, 0.1)})
    queue = WindowQueue(per_stream=3)
    queue.put(pending(other, 0), block=False)
    for start in range(0, 60, 10):  # a burst of six windows from one live stream
        queue.put(pending(live, start), block=False)
    taken = queue.take(100, timeout=0)
    assert [(i.state.id, i.window.start) for i in taken] == [
        ("other", 0),
        ("live", 30),
        ("live", 40),
        ("live", 50),
    ]
    assert live.counters.windows_dropped == 3
    assert other.counters.windows_dropped == 0


def test_queue_forgets_a_stream_once_its_end_is_taken() -> None:
    """A serve adds and ends edge streams for months: what the queue keeps per stream
    (its deque, count, bound and max age, keyed by id()) goes with the stream's end."""
    from soundwatch.pipeline import _StreamEnd

    queue = WindowQueue(per_stream=3)
    states = [
        StreamState(ScriptedSource(f"s{i}", 0), {frozenset({TAGS}): (0.1, 0.1)}) for i in range(50)
    ]
    for state in states:
        queue.set_limit(state, 2)
        queue.set_max_age(state, 10.0)
        item = pending(state, 0)
        item.t_ingest = time.monotonic()  # fresh: not dropped for its age
        queue.put(item, block=False)
        queue.put_end(_StreamEnd(state))
    taken = queue.take(1000, timeout=0)
    assert len(taken) == 100 and len(queue) == 0
    assert not (queue._queues or queue._windows or queue._limits or queue._max_ages)


def test_queue_counts_event_window_drops_apart_from_tag_drops() -> None:
    state = StreamState(ScriptedSource("s", 0), {frozenset({TAGS}): (0.1, 0.1)})
    queue = WindowQueue(per_stream=1)
    queue.put(pending(state, 0, frozenset({TAGS})), block=False)
    queue.put(pending(state, 10, frozenset({EVENTS})), block=False)  # drops the tag window
    queue.put(pending(state, 20, frozenset({TAGS, EVENTS})), block=False)  # drops the event one
    queue.put(pending(state, 30, frozenset({TAGS, EVENTS})), block=False)  # drops a shared one
    assert state.counters.windows_dropped == 2
    assert state.counters.event_windows_dropped == 1


def test_queue_drops_windows_older_than_the_max_age_when_taken_from_every_stream() -> None:
    """Past capacity: windows whose audio arrived longer ago than the stream's max age are
    dropped (counted) when taken, from each bounded stream alike; a stream without a max
    age (one that waits) keeps its old windows."""
    series = {frozenset({TAGS}): (0.1, 0.1)}
    a, b = (StreamState(ScriptedSource(name, 0), series) for name in ("a", "b"))
    waits = StreamState(ScriptedSource("file", 0, waits=True), series)
    queue = WindowQueue(per_stream=10)
    for state in (a, b):
        queue.set_max_age(state, 1.0)
    now = time.monotonic()
    for start, age in ((0, 5.0), (10, 3.0), (20, 0.0)):
        for state in (a, b, waits):
            item = pending(state, start)
            item.t_ingest = now - age
            queue.put(item, block=False)
    taken = queue.take(100, timeout=0)
    assert [(i.state.id, i.window.start) for i in taken] == [
        ("file", 0),
        ("file", 10),
        ("a", 20),
        ("b", 20),
        ("file", 20),
    ]
    assert (a.counters.windows_dropped, b.counters.windows_dropped) == (2, 2)
    assert waits.counters.windows_dropped == 0
    with pytest.raises(ValueError, match="positive"):
        queue.set_max_age(a, 0.0)


def test_a_waiting_stream_blocks_instead_of_dropping_and_end_markers_never_wait() -> None:
    state = StreamState(ScriptedSource("file", 0, waits=True), {frozenset({TAGS}): (0.1, 0.1)})
    queue = WindowQueue(per_stream=2)
    queue.put(pending(state, 0), block=True)
    queue.put(pending(state, 10), block=True)
    third = threading.Thread(target=queue.put, args=(pending(state, 20), True))
    third.start()
    third.join(0.3)
    assert third.is_alive()  # held: no room for this stream
    queue.put_end(_StreamEnd(state))  # never waits
    assert [i.window.start for i in queue.take(1, timeout=0)] == [0]
    third.join(30)
    assert not third.is_alive()
    rest = queue.take(10, timeout=0)
    assert [getattr(i, "window", None) and i.window.start for i in rest[:1]] == [10]
    assert isinstance(rest[1], _StreamEnd) and rest[2].window.start == 20  # arrival order
    assert state.counters.windows_dropped == 0


# --- the pipeline -----------------------------------------------------------------------------
def test_live_stream_drops_while_a_waiting_stream_beside_it_loses_nothing() -> None:
    """Inference stalls: the live stream drops its own oldest windows (counted), the
    waiting stream (a fast file, a pipe) is held and every one of its windows is tagged."""
    gate = Gate()
    live = ScriptedSource("mic", blocks=100)  # 10 s
    fast = ScriptedSource("file", blocks=100, waits=True)
    collector = Collector()
    pipeline = Pipeline(
        [live, fast], gate, [collector], window_s=1.0, hop_s=0.1, max_pending_windows=4
    )
    pipeline.start()
    wait_until(lambda: live.ended)  # all live audio arrived while inference was stuck
    gate.opened.set()
    assert pipeline.wait(timeout=60)
    by_stream = {"mic": 0, "file": 0}
    for result in collector.results:
        by_stream[result.stream] += 1
    windows_per_stream = 91  # 1 s windows every 0.1 s over 10 s
    mic, file = pipeline.streams
    assert file.counters.windows_dropped == 0
    assert by_stream["file"] == windows_per_stream
    assert mic.counters.windows_dropped > 0
    assert mic.counters.windows_dropped + by_stream["mic"] == windows_per_stream
    mic_starts = [r.start_frame for r in collector.results if r.stream == "mic"]
    assert mic_starts[-1] == 900  # the newest windows survive


def test_pending_bound_counts_seconds_of_hops_per_series() -> None:
    tags = {frozenset({TAGS, EVENTS}): (3.0, 0.5)}
    two = {frozenset({TAGS}): (10.0, 1.0), frozenset({EVENTS}): (3.0, 0.5)}
    assert pending_bound(tags, 32, None) == 32
    assert pending_bound(tags, 32, 2.0) == 4
    assert pending_bound(two, 32, 2.0) == 2 + 4  # both series' windows due at one boundary
    assert pending_bound(two, 5, 2.0) == 5  # max_pending_windows still caps
    assert pending_bound({frozenset({TAGS}): (10.0, 5.0)}, 32, 2.0) == 1  # at least one
    with pytest.raises(SoundwatchError, match="max_pending_seconds must be positive"):
        pending_bound(tags, 32, 0.0)


def test_live_stream_keeps_only_max_pending_seconds_while_a_waiting_stream_is_held() -> None:
    """Inference stalls with a bound of 0.5 s (five 0.1 s hops): the live stream keeps
    only its newest five windows; the waiting stream is not bounded by seconds and loses
    nothing."""
    gate = Gate()
    live = ScriptedSource("mic", blocks=100)  # 10 s
    fast = ScriptedSource("file", blocks=100, waits=True)
    collector = Collector()
    pipeline = Pipeline(
        [live, fast],
        gate,
        [collector],
        window_s=1.0,
        hop_s=0.1,
        max_pending_windows=32,
        max_pending_seconds=0.5,
    )
    pipeline.start()
    wait_until(lambda: live.ended)
    gate.opened.set()
    assert pipeline.wait(timeout=60)
    mic, file = pipeline.streams
    mic_starts = [r.start_frame for r in collector.results if r.stream == "mic"]
    assert mic_starts[-5:] == [860, 870, 880, 890, 900]
    assert 850 not in mic_starts  # the sixth newest did not fit (32 windows would hold it)
    assert mic.counters.windows_dropped + len(mic_starts) == 91
    assert file.counters.windows_dropped == 0
    assert sum(r.stream == "file" for r in collector.results) == 91


def test_live_streams_share_one_capture_thread_and_each_keeps_its_order() -> None:
    """Twelve live sources are served by one capture thread (a waiting source keeps its
    own); every window of every stream arrives, in each stream's time order, and the
    on_audio tap sees each stream's blocks in order."""
    live = [ScriptedSource(f"mic{i}", blocks=30) for i in range(12)]
    fast = ScriptedSource("file", blocks=30, waits=True)
    seen: dict[str, list[float]] = {}
    collector = Collector()
    pipeline = Pipeline(
        [*live, fast],
        zeros_infer,
        [collector],
        window_s=1.0,
        hop_s=0.5,
        on_audio=lambda stream, block: seen.setdefault(stream, []).append(block.t_start),
    )
    pipeline.start()
    assert sorted(t.name for t in pipeline._threads) == ["capture", "stream-file"]
    assert pipeline.wait(timeout=60)
    assert not pipeline.errors
    for source in [*live, fast]:
        starts = [r.start_frame for r in collector.results if r.stream == source.id]
        assert starts == [0, 50, 100, 150, 200], source.id  # 3 s: 5 windows, in order
        assert seen[source.id] == [1000.0 + 0.1 * i for i in range(30)]
        assert source.stopped
    assert all(state.ended for state in pipeline.streams)


class EndRecorder(Collector):
    """Records, for each stream end, which streams were still running at that moment."""

    def __init__(self, pipeline_ref: list[Pipeline]) -> None:
        super().__init__()
        self.pipeline_ref = pipeline_ref
        self.ends: list[tuple[str, list[str]]] = []

    def on_stream_end(self, stream: str) -> None:
        pipeline = self.pipeline_ref[0]
        running = [s.id for s in pipeline.streams if not s.ended and s.id != stream]
        self.ends.append((stream, running))


def test_a_stream_end_is_reported_while_other_streams_still_run() -> None:
    short = ScriptedSource("short", blocks=20)
    long = ScriptedSource("long", blocks=10_000)
    ref: list[Pipeline] = []
    recorder = EndRecorder(ref)
    pipeline = Pipeline([short, long], zeros_infer, [recorder], window_s=1.0, hop_s=0.5)
    ref.append(pipeline)
    pipeline.start()
    wait_until(lambda: recorder.ends)
    assert recorder.ends[0] == ("short", ["long"])
    assert all(r.stream == "short" or r.stream == "long" for r in recorder.results)
    short_results = [r for r in recorder.results if r.stream == "short"]
    assert [r.start_frame for r in short_results] == [0, 50, 100]  # all before its end
    assert pipeline.streams[0].report().ended
    pipeline.stop()
    assert pipeline.wait(timeout=30)
    assert [stream for stream, _ in recorder.ends] == ["short", "long"]


def test_a_failing_stream_is_reported_and_the_others_go_on(caplog) -> None:
    broken = ScriptedSource("broken", blocks=100, fail_after=17)
    healthy = ScriptedSource("healthy", blocks=50, waits=True)
    collector = Collector()
    pipeline = Pipeline([broken, healthy], zeros_infer, [collector], window_s=1.0, hop_s=0.5)
    with pytest.raises(SoundwatchError, match="stream broken failed: OSError: broken: device"):
        pipeline.run()
    assert sum(r.stream == "healthy" for r in collector.results) == 9  # 5 s: 9 windows
    assert any(r.stream == "broken" and r.final for r in collector.results)  # tail tagged
    report = pipeline.streams[0].report()
    assert report.ended and report.error == "OSError: broken: device unplugged"
    assert broken.stopped and healthy.stopped
    assert "Traceback" in caplog.text or any(r.exc_info for r in caplog.records)


def test_inference_failure_stops_every_stream_with_a_clear_error() -> None:
    """A model that fails every pass: each failure is survived until MAX_INFERENCE_FAILURES
    within a minute, then the run ends naming the cause (see test_faults.py for one)."""

    def broken_infer(mels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise RuntimeError("CUDA error: out of memory")

    sources = [ScriptedSource("a", blocks=10_000), ScriptedSource("b", blocks=10_000, waits=True)]
    pipeline = Pipeline(sources, broken_infer, [], window_s=1.0, hop_s=0.5)
    with pytest.raises(
        SoundwatchError,
        match=rf"inference failed {MAX_INFERENCE_FAILURES} times within 60 s "
        r"\(last: RuntimeError: CUDA error: out of memory\); the model or its device is broken",
    ):
        pipeline.run()
    assert all(s.stopped for s in sources)
    assert pipeline.faults.inference_failures == MAX_INFERENCE_FAILURES
    assert sum(s.counters.windows_failed for s in pipeline.streams) >= MAX_INFERENCE_FAILURES


class BrokenHandler(Collector):
    def on_result(self, result: WindowResult) -> None:
        raise ValueError("subscriber bug")


def test_handler_failure_stops_the_run_with_a_clear_error() -> None:
    source = ScriptedSource("a", blocks=10_000)
    pipeline = Pipeline([source], zeros_infer, [BrokenHandler()], window_s=1.0, hop_s=0.5)
    with pytest.raises(
        SoundwatchError, match="delivering results failed: ValueError: subscriber bug"
    ):
        pipeline.run()
    assert source.stopped


def test_threads_that_do_not_stop_are_named_instead_of_hanging() -> None:
    hang = threading.Event()
    stuck = ScriptedSource("stuck", blocks=10, hang=hang)

    class StopAtOnce(Collector):
        def on_tick(self) -> None:
            pipeline.stop()

    pipeline = Pipeline([stuck], zeros_infer, [StopAtOnce()], window_s=1.0, hop_s=0.5)
    try:
        with pytest.raises(SoundwatchError, match=r"did not stop within 0.5 s.*stream-stuck"):
            pipeline.run(shutdown_timeout=0.5)
    finally:
        hang.set()
        assert pipeline.wait(timeout=30)


def test_sources_already_started_are_stopped_when_another_cannot_start() -> None:
    first = ScriptedSource("first", blocks=10)
    second = ScriptedSource("second", blocks=10, fail_start=True)
    pipeline = Pipeline([first, second], zeros_infer, [], window_s=1.0, hop_s=0.5)
    with pytest.raises(SoundwatchError, match="cannot open second"):
        pipeline.run()
    assert first.started and first.stopped


def test_duplicate_stream_ids_are_refused() -> None:
    sources = [ScriptedSource("mic", 1), ScriptedSource("mic", 1), ScriptedSource("x", 1)]
    with pytest.raises(SoundwatchError, match=r"unique, got \['mic'\].*--source ID=SPEC"):
        Pipeline(sources, zeros_infer, [], window_s=1.0, hop_s=0.5)

"""The live pipeline: capture -> log-mel frames -> windows -> batched inference -> handlers.

Threads and what they own:

- one **capture thread** for every live source (a microphone, a real-time file or synthetic
  source): every ``read_interval_s`` it reads what each source has ready (``read(0)``, never
  waiting), computes each new mel frame once (:class:`~soundwatch.dsp.StreamingLogMel`), cuts
  windows (:class:`MelWindower`) and puts them into the bounded :class:`WindowQueue`; when a
  source ends it queues that stream's end marker. One thread instead of one per stream:
  with a thread per stream waking every few milliseconds, dozens of streams spent more CPU
  on wake-ups and GIL hand-offs than on their frontends, and delayed the inference thread
  (see docs/performance.md);
- one **stream thread** per source that waits when inference is behind
  (``Source.waits_when_behind``: a fast-paced file, a pipe), since its ``put`` may block;
- one **inference thread**: takes due windows of all streams and runs them as one batch
  through the tagger (forward passes only; ``soundwatch run`` gives it a tagger that splits
  a pass into concurrent chunks, one per core: :mod:`soundwatch.models.parallel`, still one
  call here, so a failed chunk fails the pass and the watchdog times the whole pass), then
  hands the batch with its outputs to
- one **delivery thread** through a queue of two batches: it turns each output into a
  :class:`~soundwatch.results.WindowResult` and hands it to the result handlers
  (publisher, event detector, collector) in each stream's time order. The model releases
  the GIL, so it runs while the previous batch is published. When the delivery thread
  reaches a stream's end marker every window of that stream has been delivered, and the
  handlers hear ``on_stream_end`` for it at once. Every handler call (``on_tick`` too)
  happens on this thread: ZeroMQ sockets are used from it only.

Backpressure is per stream (:class:`WindowQueue`): a live stream that falls behind drops
its own oldest windows (counted per window series, with a rate-limited warning); a source
that can wait (``Source.waits_when_behind``: a fast-paced file, a pipe) is held instead,
so nothing of it is lost. One stream never evicts another's windows.

Faults of the model (see docs/reliability.md): a forward pass that raises is logged with its
traceback and counted (``inference_failures``), its windows are dropped and counted per
stream (``windows_failed``) and inference goes on with the next batch; failures that keep
coming (:data:`MAX_INFERENCE_FAILURES` within :data:`INFERENCE_FAILURE_PERIOD_S`) end
:meth:`Pipeline.run` with a :class:`SoundwatchError` naming the cause. A **watchdog
thread** notices a forward pass that has not returned after ``inference_timeout`` s
(logged, counted as ``inference_stalls``, ``inference_stalled`` while it lasts) and ends the
run after ``inference_deadline`` s; meanwhile the capture thread goes on and the bounded
queue counts the live streams' drops.
"""

from __future__ import annotations

import logging
import math
import queue as queue_module
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from soundwatch.dsp import StreamingLogMel
from soundwatch.dsp.activity import ActivityGate, GateSettings
from soundwatch.dsp.tables import HOP as HOP_SAMPLES
from soundwatch.dsp.windows import FRAMES_PER_SECOND, MelWindow, MelWindower, seconds_to_frames
from soundwatch.errors import SoundwatchError
from soundwatch.results import EVENTS, TAGS, ResultHandler, StreamReport, WindowResult
from soundwatch.stream import AudioBlock, Source

log = logging.getLogger(__name__)

#: Seconds :meth:`Pipeline.run` waits for its threads after a stop before it gives up.
SHUTDOWN_TIMEOUT_S = 10.0
#: How often the capture thread reads the live sources: the most a block waits before its
#: frames are computed (a window's result is delayed by up to this much).
READ_INTERVAL_S = 0.05
#: Rate limit of the "falling behind" warning, per stream.
DROP_WARNING_INTERVAL_S = 5.0
#: With ``stagger``, stream ``i``'s window phase is ``i x this`` (mod 1) of the hop: the
#: golden-ratio sequence, which spreads any number of streams evenly over the hop.
GOLDEN_RATIO_FRACTION = (5**0.5 - 1) / 2
#: This many failed forward passes within :data:`INFERENCE_FAILURE_PERIOD_S` end the run:
#: one failure (a transient CUDA error, a bad batch) costs one batch; a broken model or
#: device fails every pass and must not leave a process that publishes nothing.
MAX_INFERENCE_FAILURES = 5
INFERENCE_FAILURE_PERIOD_S = 60.0
#: A forward pass running longer than this is reported as stalled (logged, counted).
INFERENCE_TIMEOUT_S = 30.0
#: A forward pass running longer than this ends the run (it cannot be interrupted).
INFERENCE_DEADLINE_S = 120.0


@dataclass
class StreamCounters:
    """What one stream lost or noticed, beyond its source's own counters."""

    windows_tagged: int = 0
    windows_dropped: int = 0  # tag windows dropped because inference fell behind
    event_windows_dropped: int = 0  # the event detector's own windows, when separate
    resyncs: int = 0  # the source lost audio (device restart, overflow): windows restarted
    nonfinite_samples: int = 0  # NaN/Inf samples replaced by 0 before the frontend
    paused_samples: int = 0  # not tagged: the stream was paused (runtime control)
    windows_carried: int = 0  # delivered with the last tagged window's result (activity gate)
    windows_failed: int = 0  # dropped because their forward pass raised (model fault)


@dataclass
class BatchCounters:
    """How inference batched the windows: several streams share one forward pass."""

    forward_passes: int = 0
    windows: int = 0
    multi_stream_passes: int = 0  # passes holding windows of more than one stream


@dataclass
class FaultCounters:
    """Faults of the model noticed by the inference thread and its watchdog."""

    inference_failures: int = 0  # forward passes that raised (their windows dropped)
    inference_stalls: int = 0  # forward passes that ran past the inference timeout
    inference_stalled: int = 0  # 1 while a forward pass is past the timeout


@dataclass
class _Pending:
    """A window waiting for inference, with what is needed to timestamp its result."""

    state: StreamState
    window: MelWindow
    t_origin: float
    t_ingest: float
    purposes: frozenset[str]
    order: int = 0  # queue arrival order, across streams
    carried: bool = False  # the activity gate skipped its forward pass


@dataclass
class _StreamEnd:
    """Queued after a stream's last window: the stream's results are all delivered."""

    state: StreamState
    order: int = 0


_Item = _Pending | _StreamEnd


def window_series(
    window_s: float, hop_s: float, events: tuple[float, float] | None
) -> dict[frozenset[str], tuple[float, float]]:
    """The window series to cut, keyed by the purposes they serve.

    The tags windows always; the event detector's when ``events`` is given, sharing the
    tags windows (no extra inference) when window and hop are the same.
    """
    if events is None:
        return {frozenset({TAGS}): (window_s, hop_s)}
    if seconds_to_frames(events[0]) == seconds_to_frames(window_s) and seconds_to_frames(
        events[1]
    ) == seconds_to_frames(hop_s):
        return {frozenset({TAGS, EVENTS}): (window_s, hop_s)}
    return {frozenset({TAGS}): (window_s, hop_s), frozenset({EVENTS}): events}


def pending_bound(
    series: dict[frozenset[str], tuple[float, float]],
    max_windows: int,
    max_seconds: float | None,
) -> int:
    """Windows one stream may have waiting: ``max_windows``, or fewer when ``max_seconds``
    of each series' hops (at least one window per series, so the windows of all series
    due at one hop boundary always fit) add up to fewer."""
    if max_seconds is None:
        return max_windows
    if max_seconds <= 0:
        raise SoundwatchError(f"pipeline.max_pending_seconds must be positive, got {max_seconds:g}")
    by_seconds = sum(max(1, math.floor(max_seconds / hop + 1e-9)) for _, hop in series.values())
    return max(1, min(max_windows, by_seconds))


class WindowQueue:
    """Due windows of every stream, each stream bounded on its own, taken oldest first.

    A stream holds at most ``per_stream`` windows (or its own :meth:`set_limit`). When it
    is full, ``put(block=False)`` drops that stream's own oldest window (counted on the
    stream, per window series) and ``put(block=True)`` waits for room: a burst or a slow
    consumer never costs another stream anything. End markers (:meth:`put_end`) never wait
    and are never dropped.
    """

    def __init__(self, per_stream: int) -> None:
        if per_stream < 1:
            raise ValueError("per_stream must be at least 1")
        self.per_stream = per_stream
        self._limits: dict[int, int] = {}  # streams bounded tighter than per_stream
        self._max_ages: dict[int, float] = {}  # streams whose old windows are dropped at take
        self._queues: dict[int, deque[_Item]] = {}
        self._windows: dict[int, int] = {}  # windows (not end markers) queued per stream
        self._cond = threading.Condition()
        self._order = 0
        self._closed = False

    def set_limit(self, state: StreamState, limit: int) -> None:
        """Bound ``state``'s windows at ``limit`` (at least 1) instead of ``per_stream``."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        with self._cond:
            self._limits[id(state)] = limit

    def set_max_age(self, state: StreamState, seconds: float) -> None:
        """Drop ``state``'s windows (counted, like any backpressure drop) that are older
        than ``seconds`` when they are taken: past capacity a window waits behind every
        stream's backlog, and one older than the latency budget is not worth its forward
        pass. Windows are taken oldest first, so these drops fall on the streams evenly."""
        if seconds <= 0:
            raise ValueError("seconds must be positive")
        with self._cond:
            self._max_ages[id(state)] = seconds

    def put(self, item: _Pending, block: bool) -> None:
        key = id(item.state)
        with self._cond:
            limit = self._limits.get(key, self.per_stream)
            queue = self._queues.setdefault(key, deque())
            while block and self._windows.get(key, 0) >= limit and not self._closed:
                self._cond.wait(0.1)
            if self._closed:  # inference has stopped: this window can never be tagged
                item.state.record_drop(item.purposes)
                return
            if self._windows.get(key, 0) >= limit:
                oldest = next(i for i, q in enumerate(queue) if isinstance(q, _Pending))
                dropped = queue[oldest]
                del queue[oldest]
                self._windows[key] -= 1
                assert isinstance(dropped, _Pending)
                dropped.state.record_drop(dropped.purposes)
            self._append(key, item)
            self._windows[key] = self._windows.get(key, 0) + 1

    def put_end(self, item: _StreamEnd) -> None:
        with self._cond:
            self._queues.setdefault(id(item.state), deque())
            self._append(id(item.state), item)

    def _append(self, key: int, item: _Item) -> None:
        item.order = self._order
        self._order += 1
        self._queues[key].append(item)
        self._cond.notify_all()

    def take(self, max_items: int, timeout: float) -> list[_Item]:
        """Up to ``max_items`` windows and end markers, oldest first across streams,
        waiting at most ``timeout`` s for the first."""
        with self._cond:
            if not any(self._queues.values()):
                self._cond.wait(timeout)
            taken: list[_Item] = []
            now = time.monotonic()
            while len(taken) < max_items:
                heads = [(q[0].order, key) for key, q in self._queues.items() if q]
                if not heads:
                    break
                _, key = min(heads)
                item = self._queues[key].popleft()
                if isinstance(item, _Pending):
                    self._windows[key] -= 1
                    max_age = self._max_ages.get(key)
                    if max_age is not None and now - item.t_ingest > max_age:
                        item.state.record_drop(item.purposes)  # too late to be worth tagging
                        continue
                elif not self._queues[key]:  # the stream's end: forget it (a serve adds
                    self._forget(key)  # streams for months; a new object may reuse the id)
                taken.append(item)
            if taken:
                self._cond.notify_all()
            return taken

    def _forget(self, key: int) -> None:
        for table in (self._queues, self._windows, self._limits, self._max_ages):
            table.pop(key, None)

    def __len__(self) -> int:
        with self._cond:
            return sum(self._windows.values())

    def close(self) -> None:
        """No more takes will come: waiting producers return (their windows counted)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class StreamState:
    """One stream's frontend and windowing state, its clock and its counters."""

    def __init__(
        self,
        source: Source,
        series: dict[frozenset[str], tuple[float, float]],
        on_frames: Callable[[str, np.ndarray, float], None] | None = None,
        on_audio: Callable[[str, AudioBlock], None] | None = None,
        phase: float = 0.0,
    ):
        self.source = source
        self.id = source.id
        self.frontend = StreamingLogMel()
        self.windowers = {
            purposes: MelWindower(
                seconds_to_frames(window_s),
                hop := seconds_to_frames(hop_s),
                phase_frames=min(int(phase * hop), hop - 1),
            )
            for purposes, (window_s, hop_s) in series.items()
        }
        self.block_when_full = source.waits_when_behind
        self.on_frames = on_frames  # sees every mel frame batch (e.g. a live spectrogram)
        self.on_audio = on_audio  # sees every audio block (e.g. a recorder's audio ring)
        self.paused = False  # set by runtime control; the stream's thread obeys at its next block
        self.counters = StreamCounters()
        self.first_t: float | None = None  # Unix time of the stream's very first sample
        self.last_t_end: float | None = None
        self.ended = False  # every window of the stream has been delivered
        self.error: str | None = None  # why the stream stopped early, if it did
        self._segment_origin: float | None = None  # Unix time of the current segment's frame 0
        self._segment_frames = 0  # frames of the current segment so far (the next one's index)
        self._drops_warned_at = 0.0
        self._drops_since_warning = 0
        self._lock = threading.Lock()

    @property
    def nonfinite_samples(self) -> int:
        """NaN/Inf samples seen so far, over all segments."""
        return self.counters.nonfinite_samples + self.frontend.nonfinite_samples

    def report(self) -> StreamReport:
        """A snapshot of what the stream is and what it counted, for status messages."""
        with self._lock:
            counters = {
                **{name: int(value) for name, value in vars(self.source.stats()).items()},
                **{name: int(value) for name, value in vars(self.counters).items()},
                "nonfinite_samples": self.nonfinite_samples,
            }
        return StreamReport(
            stream=self.id,
            source=self.source.describe(),
            counters=counters,
            t_first=self.first_t,
            t_last_end=self.last_t_end,
            ended=self.ended,
            error=self.error,
        )

    # --- stream thread -------------------------------------------------------------
    def feed(self, block: AudioBlock, queue: WindowQueue) -> None:
        """Turn one block of audio into mel frames and queue the windows it completes."""
        # A new segment: the source lost audio (device restart, overflow, overrun), so the
        # frames before and after must not share a window.
        if not self._begin(
            len(block.samples),
            block.t_start,
            block.new_segment,
            queue,
            block.t_ingest,
            "audio was lost (see the gaps counter)",
        ):
            return
        if self.on_audio is not None:
            self.on_audio(self.id, block)
        self._push_frames(self.frontend.push(block.samples), queue, block.t_ingest)

    def feed_frames(
        self,
        frames: np.ndarray,
        t_start: float,
        new_segment: bool,
        queue: WindowQueue,
        t_ingest: float,
    ) -> None:
        """Queue the windows completed by mel frames computed elsewhere (an edge node's
        frontend): float32 ``[128, k]`` whose first frame is centred at Unix time
        ``t_start``; ``new_segment`` when they do not continue the previous frames (the
        edge lost audio, or frames were lost on the way). The windows are cut exactly as
        :meth:`feed` cuts them."""
        if self._begin(
            frames.shape[1] * HOP_SAMPLES,
            t_start,
            new_segment,
            queue,
            t_ingest,
            "frames were lost (see its counters)",
        ):
            self._push_frames(frames, queue, t_ingest)

    def _begin(
        self,
        samples: int,
        t_start: float,
        new_segment: bool,
        queue: WindowQueue,
        t_ingest: float,
        lost: str,
    ) -> bool:
        """The segment bookkeeping before new audio or frames (``samples`` of audio from
        ``t_start``) of :meth:`feed` and :meth:`feed_frames`; False while paused (tag
        nothing: the audio so far ends its segment, so events end). A ``new_segment``
        (``lost`` says what was lost) tags the open segment's tail and starts afresh."""
        if self.paused:
            self.end_segment(queue, t_ingest)  # returns at once when no segment is open
            self.counters.paused_samples += samples
            return False
        if new_segment and self._segment_origin is not None:
            log.warning("stream %s: %s; restarting its windows", self.id, lost)
            self.counters.resyncs += 1
            self.end_segment(queue, t_ingest)
        if self._segment_origin is None:
            self._start_segment(t_start)
        return True

    def _push_frames(self, frames: np.ndarray, queue: WindowQueue, t_ingest: float) -> None:
        """The one windowing path: frames of the current segment, in order, to every
        window series (and the frame tap)."""
        first_frame = self._segment_frames
        self._segment_frames += frames.shape[1]
        self._frames_out(frames, first_frame)
        for purposes, windower in self.windowers.items():
            for window in windower.push(frames):
                self._enqueue(window, purposes, queue, t_ingest)

    def end_segment(self, queue: WindowQueue, t_ingest: float) -> None:
        """Flush the frontend and windower: the tail of the audio becomes a last window."""
        if self._segment_origin is None:
            return
        self._push_frames(self.frontend.flush(), queue, t_ingest)
        for purposes, windower in self.windowers.items():
            for window in windower.flush():
                self._enqueue(window, purposes, queue, t_ingest)
        with self._lock:
            self.counters.nonfinite_samples += self.frontend.nonfinite_samples  # reset zeroes
            self.frontend.reset()
        self._segment_origin = None
        self._segment_frames = 0

    def _frames_out(self, frames: np.ndarray, first_frame: int) -> None:
        if self.on_frames is not None and frames.shape[1]:
            assert self._segment_origin is not None
            self.on_frames(self.id, frames, self._segment_origin + first_frame / FRAMES_PER_SECOND)

    def _start_segment(self, t_start: float) -> None:
        self._segment_origin = t_start
        if self.first_t is None:
            self.first_t = t_start

    def _enqueue(
        self, window: MelWindow, purposes: frozenset[str], queue: WindowQueue, t_ingest: float
    ) -> None:
        assert self._segment_origin is not None
        item = _Pending(self, window, self._segment_origin, t_ingest, purposes)
        queue.put(item, block=self.block_when_full)

    def record_drop(self, purposes: frozenset[str]) -> None:
        """Count a window dropped by backpressure in its series' counter; warn at most every
        few seconds, with the rate."""
        with self._lock:
            if TAGS in purposes:
                self.counters.windows_dropped += 1
            else:
                self.counters.event_windows_dropped += 1
            self._drops_since_warning += 1
            now = time.monotonic()
            if now - self._drops_warned_at < DROP_WARNING_INTERVAL_S:
                return
            elapsed = now - self._drops_warned_at if self._drops_warned_at else 1.0
            log.warning(
                "stream %s: inference is falling behind; dropped %d windows (%.1f/s; %d tag "
                "and %d event windows in total). Use a smaller model, a longer hop or fewer "
                "streams",
                self.id,
                self._drops_since_warning,
                self._drops_since_warning / max(elapsed, 1e-3),
                self.counters.windows_dropped,
                self.counters.event_windows_dropped,
            )
            self._drops_warned_at = now
            self._drops_since_warning = 0


InferFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class Pipeline:
    """Run sources through the frontend, windows and tagger; deliver results to handlers."""

    def __init__(
        self,
        sources: Sequence[Source],
        infer: InferFn,
        handlers: Sequence[ResultHandler],
        *,
        window_s: float,
        hop_s: float,
        max_pending_windows: int = 32,
        max_pending_seconds: float | None = None,
        max_window_age: float | None = None,
        max_batch: int = 32,
        gate: GateSettings | None = None,
        events_window: tuple[float, float] | None = None,
        on_frames: Callable[[str, np.ndarray, float], None] | None = None,
        on_audio: Callable[[str, AudioBlock], None] | None = None,
        read_interval_s: float = READ_INTERVAL_S,
        inference_timeout: float = INFERENCE_TIMEOUT_S,
        inference_deadline: float = INFERENCE_DEADLINE_S,
        open_ended: bool = False,
        stagger: bool = False,
    ) -> None:
        """``on_frames(stream, frames [128, k], t_first)`` and ``on_audio(stream, block)`` are
        called on the capture or stream threads with every batch of mel frames and every
        audio block (32 kHz mono, capture-clock stamped), in each stream's order: cheap taps
        for displays and recorders, which must copy what they keep and never block.

        Each stream may have at most ``max_pending_windows`` windows waiting, and with
        ``max_pending_seconds`` at most that many seconds of hops per window series
        (:func:`pending_bound`): past capacity a live stream drops its oldest windows
        instead of queueing many seconds of audio, and a stop waits for little backlog.
        A live stream's window still waiting ``max_window_age`` s after its audio arrived
        is dropped when taken (counted): past capacity latency stays bounded and the
        drops fall evenly on the streams (windows are taken oldest first).

        With ``gate``, a window with nothing new to hear since its stream's last tagged
        window (:class:`~soundwatch.dsp.activity.ActivityGate`) skips the forward pass and
        is delivered with that window's result, marked ``carried`` (counted per stream).

        A forward pass running past ``inference_timeout`` s is reported as stalled; past
        ``inference_deadline`` s it ends the run (see the module docstring).

        ``open_ended``: streams are added while running (:meth:`add_stream`), so
        :meth:`run` lasts until :meth:`stop` even when every stream so far has ended."""
        if read_interval_s <= 0:
            raise ValueError("read_interval_s must be positive")
        if not 0 < inference_timeout <= inference_deadline:
            raise ValueError("need 0 < inference_timeout <= inference_deadline")
        ids = [source.id for source in sources]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise SoundwatchError(
                f"stream ids must be unique, got {duplicates} more than once; "
                "name them with --source ID=SPEC"
            )
        self.series = window_series(window_s, hop_s, events_window)
        self.stagger = stagger
        self._streams_made = 0  # the next stream's place in the stagger sequence
        self.streams = [
            StreamState(s, self.series, on_frames, on_audio, self._next_phase()) for s in sources
        ]
        self.open_ended = open_ended
        self._on_frames = on_frames
        self._fed: list[StreamState] = []  # streams added by add_stream, fed from outside
        self._fed_lock = threading.Lock()  # add/feed/end of fed streams; closing them all
        self._fed_closed = False
        self._fed_done: set[int] = set()  # id() of added streams already ended (end_stream)
        self.infer = infer
        self.handlers = list(handlers)
        self.max_batch = max_batch
        self.gate = gate
        # Per stream (id of its state) and window series: its activity gate and the last
        # result a forward pass gave it (what a carried window is delivered with).
        self._gates: dict[int, dict[frozenset[str], ActivityGate]] = {}
        self._last_outputs: dict[int, dict[frozenset[str], tuple[np.ndarray, np.ndarray]]] = {}
        self.queue = WindowQueue(max_pending_windows)
        self._live_bound = pending_bound(self.series, max_pending_windows, max_pending_seconds)
        self._max_window_age = max_window_age
        for state in self.streams:
            if not state.block_when_full:  # a source that waits loses nothing: no need
                self.queue.set_limit(state, self._live_bound)
                if max_window_age is not None:
                    self.queue.set_max_age(state, max_window_age)
        self.batches = BatchCounters()
        self.faults = FaultCounters()
        self.read_interval_s = read_interval_s
        self.inference_timeout = inference_timeout
        self.inference_deadline = inference_deadline
        self._failure_times: deque[float] = deque(maxlen=MAX_INFERENCE_FAILURES)
        self._pass_started: float | None = None  # monotonic start of the running forward pass
        self._inference_done = threading.Event()  # the inference thread has finished
        self._abandoned = threading.Event()  # the watchdog gave up on a hung forward pass
        self._watchdog_thread: threading.Thread | None = None
        self._capturing: StreamState | None = None  # the stream the capture thread is on
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._inference_thread: threading.Thread | None = None
        self._delivery_thread: threading.Thread | None = None
        # Batches with their outputs, from the inference to the delivery thread: two, so
        # the model runs one batch ahead of the handlers and no further.
        self._delivery: queue_module.Queue[tuple[list[_Item], dict] | None] = queue_module.Queue(
            maxsize=2
        )
        self._delivery_failed = threading.Event()
        self.errors: list[tuple[str, BaseException]] = []  # (where, error), in order

    def _next_phase(self) -> float:
        """The next stream's window phase, a fraction of the hop: 0 without ``stagger``,
        else the golden-ratio sequence (0, 0.618, 0.236, 0.854, ...), which spreads any
        number of streams, added in any order, evenly over the hop."""
        index, self._streams_made = self._streams_made, self._streams_made + 1
        return (index * GOLDEN_RATIO_FRACTION) % 1.0 if self.stagger else 0.0

    @property
    def error(self) -> BaseException | None:
        """The first error of any thread, or None."""
        return self.errors[0][1] if self.errors else None

    def fault_counters(self) -> dict[str, int]:
        """The model's fault counters (``inference_failures``, ``inference_stalls``,
        ``inference_stalled``), for status's ``inference`` field."""
        return {name: int(value) for name, value in vars(self.faults).items()}

    def reports(self) -> list[StreamReport]:
        """Every stream's current report (what status messages publish)."""
        return [state.report() for state in list(self.streams)]

    # --- streams fed from outside (soundwatch serve's edge streams) ---------------
    def add_stream(self, source: Source) -> StreamState | None:
        """Add a stream whose mel frames come from elsewhere (an edge node) while the
        pipeline runs; the caller feeds it (:meth:`feed_stream`) and ends it
        (:meth:`end_stream`). ``source`` describes it and counts for its status; the
        pipeline never reads it. A stream id may return once its earlier stream has
        ended. None when the pipeline is stopping."""
        with self._fed_lock:
            if self._fed_closed:
                return None
            current = [state for state in self.streams if state.id == source.id]
            if any(
                state in self._fed or (id(state) not in self._fed_done and not state.ended)
                for state in current
            ):
                raise SoundwatchError(f"stream id {source.id!r} is already running")
            state = StreamState(source, self.series, self._on_frames, phase=self._next_phase())
            if not state.block_when_full:
                self.queue.set_limit(state, self._live_bound)
                if self._max_window_age is not None:  # past capacity: latency stays bounded
                    self.queue.set_max_age(state, self._max_window_age)
            for old in current:  # an ended stream of the same id: its successor replaces it
                self.streams.remove(old)
                self._fed_done.discard(id(old))  # ids are reused once an object is gone
            self.streams.append(state)
            self._fed.append(state)
            return state

    def feed_stream(
        self, state: StreamState, frames: np.ndarray, t_start: float, new_segment: bool
    ) -> bool:
        """Queue the windows of an added stream's frames (:meth:`StreamState.feed_frames`);
        waits for room when its source waits (``waits_when_behind``). False when the stream
        was already ended (the frames are not used)."""
        with self._fed_lock:
            if state not in self._fed:
                return False
            state.feed_frames(frames, t_start, new_segment, self.queue, time.monotonic())
            return True

    def end_stream(self, state: StreamState) -> None:
        """End an added stream: its tail becomes a last window, then its end marker."""
        with self._fed_lock:
            if state in self._fed:
                self._fed.remove(state)
                self._fed_done.add(id(state))
                self._finish_stream(state)

    def _close_fed_streams(self) -> None:
        """Stopping: no stream is added any more, and every added stream ends now."""
        with self._fed_lock:
            self._fed_closed = True
            fed, self._fed = self._fed, []
            for state in fed:
                self._finish_stream(state)

    # --- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        started: list[Source] = []
        try:
            for state in self.streams:
                state.source.start()
                started.append(state.source)
        except BaseException:  # e.g. one of several microphones cannot be opened
            for source in started:
                source.stop()
            raise
        live = [state for state in self.streams if not state.block_when_full]
        if live:
            thread = threading.Thread(
                target=self._run_capture, args=(live,), name="capture", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        for state in self.streams:
            if state.block_when_full:
                thread = threading.Thread(
                    target=self._run_stream, args=(state,), name=f"stream-{state.id}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        self._inference_thread = threading.Thread(
            target=self._run_inference, name="inference", daemon=True
        )
        self._inference_thread.start()
        self._delivery_thread = threading.Thread(
            target=self._run_delivery, name="delivery", daemon=True
        )
        self._delivery_thread.start()
        self._watchdog_thread = threading.Thread(
            target=self._run_watchdog, name="inference-watchdog", daemon=True
        )
        self._watchdog_thread.start()

    def stop(self) -> None:
        """Ask every thread to finish: sources stop, their last windows are still tagged."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until all streams ended and their windows were delivered (True) or timeout."""
        assert self._inference_thread is not None and self._delivery_thread is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        threads = [*self._threads, self._delivery_thread, self._watchdog_thread]
        if not self._abandoned.is_set():  # a hung forward pass is not waited for
            threads.append(self._inference_thread)
        for thread in threads:
            if thread is None:
                continue
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
            if thread.is_alive():
                return False
        return True

    def run(self, shutdown_timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Start, wait until every source ended (or :meth:`stop`), and re-raise thread errors.

        Raises :class:`SoundwatchError` when the threads do not finish within
        ``shutdown_timeout`` seconds of the stop (naming them), or the first thread error.
        """
        self.start()
        try:
            while not self.wait(timeout=0.2) and not self._stop.is_set():
                pass
        finally:
            self.stop()
            self._close_fed_streams()
            if not self.wait(timeout=shutdown_timeout):
                threads = [*self._threads, self._inference_thread, self._delivery_thread]
                alive = [self._describe(t) for t in threads]
                alive = [name for name in alive if name]
                raise SoundwatchError(
                    f"the pipeline did not stop within {shutdown_timeout:g} s; still running: "
                    f"{', '.join(alive)} (a device or the model may be hung)"
                )
        if self.errors:
            where, error = self.errors[0]
            if isinstance(error, SoundwatchError):
                raise error
            raise SoundwatchError(f"{where} failed: {type(error).__name__}: {error}") from error

    def _describe(self, thread: threading.Thread | None) -> str:
        """A running thread's name for error messages ("" when it finished); the capture
        thread names the stream it is busy with."""
        if thread is None or not thread.is_alive():
            return ""
        current = self._capturing
        if thread.name == "capture" and current is not None:
            return f"capture (in stream-{current.id})"
        return thread.name

    # --- threads -------------------------------------------------------------------
    def _run_capture(self, states: list[StreamState]) -> None:
        """Serve every live source from one thread: read what each has ready, then sleep
        until the next read interval (see the module docstring)."""
        active = list(states)
        try:
            while active and not self._stop.is_set():
                tick = time.monotonic()
                for state in list(active):
                    if self._capture_once(state):
                        active.remove(state)
                        self._finish_stream(state)
                self._capturing = None
                self._stop.wait(max(0.0, tick + self.read_interval_s - time.monotonic()))
        finally:
            for state in active:  # stopping: every source still running ends now
                self._finish_stream(state)
            self._capturing = None

    def _capture_once(self, state: StreamState) -> bool:
        """Feed what ``state``'s source has ready; True when the stream is over (ended or
        failed: the error is logged and recorded, the other streams go on)."""
        self._capturing = state
        try:
            while (block := state.source.read(timeout=0.0)) is not None:
                state.feed(block, self.queue)
            return state.source.ended
        except BaseException as error:
            self._stream_failed(state, error)
            return True

    def _stream_failed(self, state: StreamState, error: BaseException) -> None:
        log.exception("stream %s failed; the other streams go on", state.id)
        state.error = f"{type(error).__name__}: {error}"
        self.errors.append((f"stream {state.id}", error))

    def _finish_stream(self, state: StreamState) -> None:
        """Stop the source, tag its tail and queue its end marker."""
        try:
            state.source.stop()
            state.end_segment(self.queue, time.monotonic())
        except BaseException as error:
            self._stream_failed(state, error)
        finally:
            self.queue.put_end(_StreamEnd(state))

    def _run_stream(self, state: StreamState) -> None:
        try:
            while not self._stop.is_set():
                block = state.source.read(timeout=0.05)
                if block is not None:
                    state.feed(block, self.queue)
                elif state.source.ended:
                    break
        except BaseException as error:  # the other streams go on; run() raises it at the end
            self._stream_failed(state, error)
        finally:
            self._finish_stream(state)

    def _run_inference(self) -> None:
        """Forward passes only: each batch with its outputs goes to the delivery thread, so
        the model (which releases the GIL) runs while the previous batch is published."""
        ended: set[int] = set()  # id() of the streams whose end marker was taken
        try:
            while (
                (
                    any(id(state) not in ended for state in list(self.streams))
                    or (self.open_ended and not self._stop.is_set())
                )
                and not self._delivery_failed.is_set()
                and not self._abandoned.is_set()
            ):
                batch = self.queue.take(self.max_batch, timeout=0.05)
                if batch:
                    outputs = self._infer_batch(batch)
                    ended.update(id(item.state) for item in batch if isinstance(item, _StreamEnd))
                    self._hand_over((batch, outputs))
        except BaseException as error:
            log.exception("inference failed; stopping every stream")
            self.errors.append(("inference", error))
            self._stop.set()
        finally:
            self.queue.close()
            self._inference_done.set()
            self._hand_over(None)

    def _hand_over(self, item: tuple[list[_Item], dict] | None) -> None:
        """Queue for the delivery thread, waiting for room unless it failed."""
        while not self._delivery_failed.is_set() and not self._abandoned.is_set():
            try:
                self._delivery.put(item, timeout=0.1)
                return
            except queue_module.Full:
                continue

    def _run_delivery(self) -> None:
        """Every handler call happens here, in queue order (ZeroMQ sockets stay on one
        thread); ``on_tick`` at least every 50 ms."""
        try:
            while True:
                try:
                    item = self._delivery.get(timeout=0.05)
                except queue_module.Empty:
                    if self._abandoned.is_set():  # inference hung: nothing more will come
                        break
                    item = ()
                if item is None:
                    break
                if item:
                    self._deliver_batch(*item)
                for handler in self.handlers:
                    handler.on_tick()
        except BaseException as error:
            log.exception("delivering results failed; stopping every stream")
            self.errors.append(("delivering results", error))
            self._delivery_failed.set()
            self._stop.set()

    def _infer_batch(self, batch: list[_Item]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Run the batch's windows: ``{index in batch: (probs, embedding)}``."""
        # Windows of one length form one forward pass (final windows may be shorter, and
        # event windows may differ).
        by_length: dict[int, list[int]] = {}
        for index, item in enumerate(batch):
            if isinstance(item, _Pending):
                if self.gate is not None and self._gate_of(item).carry(item.window):
                    item.carried = True  # nothing new to hear: no forward pass
                    continue
                by_length.setdefault(item.window.mel.shape[1], []).append(index)
        outputs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for indices in by_length.values():
            items = [batch[i] for i in indices]
            self._pass_started = time.monotonic()
            try:
                probs, embeddings = self.infer(np.stack([item.window.mel for item in items]))
            except Exception as error:  # the batch is lost; inference goes on (or gives up)
                self._inference_failed(items, error)
                continue
            finally:
                self._pass_ended()
            self.batches.forward_passes += 1
            self.batches.windows += len(items)
            self.batches.multi_stream_passes += len({id(item.state) for item in items}) > 1
            for i, p, e in zip(indices, probs, embeddings, strict=True):
                outputs[i] = (p, e)
        if self.gate is not None:
            self._carry_outputs(batch, outputs)
        return outputs

    def _gate_of(self, item: _Pending) -> ActivityGate:
        gates = self._gates.setdefault(id(item.state), {})
        gate = gates.get(item.purposes)
        if gate is None:
            assert self.gate is not None
            gate = gates[item.purposes] = ActivityGate(self.gate)
        return gate

    def _carry_outputs(
        self, batch: list[_Item], outputs: dict[int, tuple[np.ndarray, np.ndarray]]
    ) -> None:
        """Give each carried window its stream's last result, in the batch's order; a
        carried window whose reference's forward pass failed is lost with it (counted)."""
        for index, item in enumerate(batch):
            if isinstance(item, _StreamEnd):  # nothing of this stream comes any more
                self._gates.pop(id(item.state), None)
                self._last_outputs.pop(id(item.state), None)
                continue
            last = self._last_outputs.setdefault(id(item.state), {})
            if not item.carried:
                if index in outputs:
                    last[item.purposes] = outputs[index]
                else:  # failed: the next window of the series must be run
                    last.pop(item.purposes, None)
                    self._gate_of(item).forget()
            elif item.purposes in last:
                outputs[index] = last[item.purposes]
            else:
                with item.state._lock:
                    item.state.counters.windows_failed += 1

    def _inference_failed(self, items: list[_Pending], error: Exception) -> None:
        """Count a failed forward pass and its windows (per stream); raise a
        :class:`SoundwatchError` when failures keep coming (see MAX_INFERENCE_FAILURES)."""
        now = time.monotonic()
        self.faults.inference_failures += 1
        for item in items:
            with item.state._lock:
                item.state.counters.windows_failed += 1
        streams = sorted({item.state.id for item in items})
        log.error(
            "a forward pass failed; its %d window(s) (streams %s) are lost, inference goes on",
            len(items),
            ", ".join(streams),
            exc_info=error,
        )
        self._failure_times.append(now)
        if (
            len(self._failure_times) == MAX_INFERENCE_FAILURES
            and now - self._failure_times[0] <= INFERENCE_FAILURE_PERIOD_S
        ):
            raise SoundwatchError(
                f"inference failed {MAX_INFERENCE_FAILURES} times within "
                f"{INFERENCE_FAILURE_PERIOD_S:g} s (last: {type(error).__name__}: {error}); "
                "the model or its device is broken: see the log for the tracebacks"
            ) from error

    def _pass_ended(self) -> None:
        started, self._pass_started = self._pass_started, None
        if self.faults.inference_stalled and started is not None:
            self.faults.inference_stalled = 0
            log.warning(
                "the stalled forward pass returned after %.1f s", time.monotonic() - started
            )

    def _run_watchdog(self) -> None:
        """Notice a forward pass that does not return: report it past the timeout, end the
        run past the deadline (the pass cannot be interrupted; its thread is left behind)."""
        reported: float | None = None  # start of the pass already reported as stalled
        while not self._inference_done.wait(min(0.5, self.inference_timeout / 4)):
            started = self._pass_started
            if started is None:
                continue
            elapsed = time.monotonic() - started
            if elapsed >= self.inference_deadline:
                error = SoundwatchError(
                    f"a forward pass has not returned after {elapsed:.1f} s "
                    f"(deadline {self.inference_deadline:g} s): the model or its device hangs"
                )
                log.error("%s; stopping every stream", error)
                self.errors.append(("inference", error))
                self._abandoned.set()
                self._stop.set()
                self.queue.close()  # waiting sources return; their windows count as dropped
                return
            if elapsed >= self.inference_timeout and reported != started:
                reported = started
                self.faults.inference_stalls += 1
                self.faults.inference_stalled = 1
                log.error(
                    "a forward pass has run for %.1f s (timeout %g s): inference is stalled; "
                    "live streams drop their oldest windows meanwhile",
                    elapsed,
                    self.inference_timeout,
                )

    def _deliver_batch(
        self, batch: list[_Item], outputs: dict[int, tuple[np.ndarray, np.ndarray]]
    ) -> None:
        """Results and stream ends in queue order, so each stream's windows reach the
        handlers in time order and its end after its last window."""
        for index, item in enumerate(batch):
            if isinstance(item, _Pending):
                if index in outputs:  # else its forward pass failed (counted)
                    self._deliver(item, *outputs[index])
            else:
                item.state.ended = True
                for handler in self.handlers:
                    handler.on_stream_end(item.state.id)

    def _deliver(self, item: _Pending, probs: np.ndarray, embedding: np.ndarray) -> None:
        state, window = item.state, item.window
        t_start = item.t_origin + window.start / FRAMES_PER_SECOND
        t_end = item.t_origin + window.stop / FRAMES_PER_SECOND
        first = state.first_t if state.first_t is not None else item.t_origin
        result = WindowResult(
            stream=state.id,
            start_frame=window.start,
            stop_frame=window.stop,
            t_start=t_start,
            t_end=t_end,
            offset_s=t_start - first,
            probs=probs,
            embedding=embedding,
            t_ingest=item.t_ingest,
            final=window.final,
            purposes=item.purposes,
            carried=item.carried,
        )
        if TAGS in item.purposes:
            with state._lock:
                state.counters.windows_tagged += 1
                state.counters.windows_carried += item.carried
                state.last_t_end = t_end
        for handler in self.handlers:
            handler.on_result(result)


@dataclass
class Collector:
    """A result handler that keeps every result in memory (offline tagging)."""

    results: list[WindowResult] = field(default_factory=list)

    def on_result(self, result: WindowResult) -> None:
        self.results.append(result)

    def on_stream_end(self, stream: str) -> None:
        pass

    def on_tick(self) -> None:
        pass

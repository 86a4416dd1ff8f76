"""The live pipeline: capture -> log-mel frames -> windows -> batched inference -> sinks.

Threads and what they own:

- one **stream thread** per source: reads audio blocks, computes each mel frame once
  (:class:`~soundwatch.dsp.StreamingLogMel`), cuts windows (:class:`MelWindower`) and puts
  them into the shared bounded :class:`WindowQueue`;
- one **inference thread**: takes due windows of all streams, runs them as one batch
  through the :class:`~soundwatch.models.InferenceWorker` and hands each
  :class:`WindowResult` to the result handlers (publisher, event detector, collector).
  ZeroMQ sockets are used from this thread only.

Backpressure: when inference falls behind, the queue drops the oldest windows of live
sources (counted per stream, with a rate-limited warning naming the stream); sources
paced ``fast`` (files tagged as fast as possible) wait instead, so nothing of them is lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from soundwatch.dsp import StreamingLogMel
from soundwatch.dsp.windows import FRAMES_PER_SECOND, MelWindow, MelWindower, seconds_to_frames
from soundwatch.errors import SoundwatchError
from soundwatch.results import EVENTS, TAGS, ResultHandler, WindowResult
from soundwatch.stream import AudioBlock, Source

log = logging.getLogger(__name__)

@dataclass
class StreamCounters:
    """What one stream lost or noticed, beyond its source's own counters."""

    windows_tagged: int = 0
    windows_dropped: int = 0
    resyncs: int = 0  # the source lost audio (device restart, overflow): windows restarted
    nonfinite_samples: int = 0  # NaN/Inf samples replaced by 0 before the frontend


@dataclass
class BatchCounters:
    """How inference batched the windows: several streams share one forward pass."""

    forward_passes: int = 0
    windows: int = 0
    multi_stream_passes: int = 0  # passes holding windows of more than one stream


@dataclass
class _Pending:
    """A window waiting for inference, with what is needed to timestamp its result."""

    state: StreamState
    window: MelWindow
    t_origin: float
    t_ingest: float
    purposes: frozenset[str]


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


class WindowQueue:
    """Bounded queue of due windows from all streams, oldest first.

    ``put(block=False)`` never waits: when full it drops the oldest window (counted on its
    stream). ``put(block=True)`` waits for room instead (for ``fast``-paced files).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: _Pending, block: bool) -> None:
        with self._cond:
            while block and len(self._items) >= self.capacity and not self._closed:
                self._cond.wait(0.1)
            if len(self._items) >= self.capacity:
                dropped = self._items.popleft()
                dropped.state.record_drop()
            self._items.append(item)
            self._cond.notify_all()

    def take(self, max_items: int, timeout: float) -> list[_Pending]:
        """Up to ``max_items`` windows, waiting at most ``timeout`` s for the first."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            batch = [self._items.popleft() for _ in range(min(max_items, len(self._items)))]
            if batch:
                self._cond.notify_all()
            return batch

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class StreamState:
    """One stream's frontend and windowing state, its clock and its counters."""

    @property
    def nonfinite_samples(self) -> int:
        """NaN/Inf samples seen so far, over all segments."""
        return self.counters.nonfinite_samples + self.frontend.nonfinite_samples

    def __init__(
        self,
        source: Source,
        series: dict[frozenset[str], tuple[float, float]],
        block_when_full: bool,
    ):
        self.source = source
        self.id = source.id
        self.frontend = StreamingLogMel()
        self.windowers = {
            purposes: MelWindower(seconds_to_frames(window_s), seconds_to_frames(hop_s))
            for purposes, (window_s, hop_s) in series.items()
        }
        self.block_when_full = block_when_full
        self.counters = StreamCounters()
        self.first_t: float | None = None  # Unix time of the stream's very first sample
        self.last_t_end: float | None = None
        self._segment_origin: float | None = None  # Unix time of the current segment's frame 0
        self._drops_warned_at = 0.0
        self._drops_since_warning = 0
        self._lock = threading.Lock()

    # --- stream thread -------------------------------------------------------------
    def feed(self, block: AudioBlock, queue: WindowQueue) -> None:
        """Turn one block of audio into mel frames and queue the windows it completes."""
        if block.new_segment and self._segment_origin is not None:
            # The source lost audio (device restart, overflow, overrun): the frames before
            # and after must not share a window. Tag the tail, then start afresh.
            log.warning(
                "stream %s: audio was lost (see the gaps counter); restarting its windows",
                self.id,
            )
            self.counters.resyncs += 1
            self.end_segment(queue, block.t_ingest)
        if self._segment_origin is None:
            self._start_segment(block.t_start)
        frames = self.frontend.push(block.samples)
        for purposes, windower in self.windowers.items():
            for window in windower.push(frames):
                self._enqueue(window, purposes, queue, block.t_ingest)

    def end_segment(self, queue: WindowQueue, t_ingest: float) -> None:
        """Flush the frontend and windower: the tail of the audio becomes a last window."""
        if self._segment_origin is None:
            return
        frames = self.frontend.flush()
        for purposes, windower in self.windowers.items():
            for window in windower.push(frames) + windower.flush():
                self._enqueue(window, purposes, queue, t_ingest)
        self.counters.nonfinite_samples += self.frontend.nonfinite_samples  # reset zeroes it
        self.frontend.reset()
        self._segment_origin = None

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

    def record_drop(self) -> None:
        """Count a window dropped by backpressure; warn at most every 5 s, with the rate."""
        with self._lock:
            self.counters.windows_dropped += 1
            self._drops_since_warning += 1
            now = time.monotonic()
            if now - self._drops_warned_at >= 5.0:
                elapsed = now - self._drops_warned_at if self._drops_warned_at else 1.0
                log.warning(
                    "stream %s: inference is falling behind; dropped %d windows "
                    "(%.1f/s, %d in total). Use a smaller model, a longer hop or fewer streams",
                    self.id,
                    self._drops_since_warning,
                    self._drops_since_warning / max(elapsed, 1e-3),
                    self.counters.windows_dropped,
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
        max_pending_windows: int = 64,
        max_batch: int = 32,
        fast: Callable[[Source], bool] = lambda source: False,
        events_window: tuple[float, float] | None = None,
    ) -> None:
        ids = [source.id for source in sources]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise SoundwatchError(
                f"stream ids must be unique, got {duplicates} more than once; "
                "name them with --source ID=SPEC"
            )
        series = window_series(window_s, hop_s, events_window)
        self.streams = [StreamState(s, series, block_when_full=fast(s)) for s in sources]
        self.infer = infer
        self.handlers = list(handlers)
        self.max_batch = max_batch
        self.queue = WindowQueue(max_pending_windows)
        self.batches = BatchCounters()
        self._stop = threading.Event()
        self._streams_done = 0
        self._done_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._inference_thread: threading.Thread | None = None
        self.error: BaseException | None = None

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
        for state in self.streams:
            thread = threading.Thread(
                target=self._run_stream, args=(state,), name=f"stream-{state.id}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        self._inference_thread = threading.Thread(
            target=self._run_inference, name="inference", daemon=True
        )
        self._inference_thread.start()

    def stop(self) -> None:
        """Ask every thread to finish: sources stop, their last windows are still tagged."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until all streams ended and their windows were delivered (True) or timeout."""
        assert self._inference_thread is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in [*self._threads, self._inference_thread]:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
            if thread.is_alive():
                return False
        return True

    def run(self) -> None:
        """Start, wait until every source ended (or :meth:`stop`), and re-raise thread errors."""
        self.start()
        try:
            while not self.wait(timeout=0.2):
                pass
        finally:
            self.stop()
            self.wait(timeout=5.0)
        if self.error is not None:
            raise self.error

    # --- threads -------------------------------------------------------------------
    def _run_stream(self, state: StreamState) -> None:
        try:
            while not self._stop.is_set():
                block = state.source.read(timeout=0.05)
                if block is not None:
                    state.feed(block, self.queue)
                elif state.source.ended:
                    break
        except BaseException as error:  # surfaced by run(); the other streams go on
            log.error("stream %s failed: %s", state.id, error)
            self.error = self.error or error
        finally:
            state.source.stop()
            try:
                state.end_segment(self.queue, time.monotonic())
            finally:
                with self._done_lock:
                    self._streams_done += 1

    def _all_streams_done(self) -> bool:
        with self._done_lock:
            return self._streams_done == len(self.streams)

    def _run_inference(self) -> None:
        try:
            while True:
                streams_done = self._all_streams_done()  # read before taking: no lost tail
                batch = self.queue.take(self.max_batch, timeout=0.05)
                if batch:
                    self._process(batch)
                elif streams_done:
                    break
                for handler in self.handlers:
                    handler.on_tick()
            for state in self.streams:
                for handler in self.handlers:
                    handler.on_stream_end(state.id)
        except BaseException as error:
            log.error("inference failed: %s", error)
            self.error = self.error or error
            self._stop.set()
        finally:
            self.queue.close()

    def _process(self, batch: list[_Pending]) -> None:
        # Windows of one length form one forward pass (final windows may be shorter, and
        # event windows may differ); results are then delivered in queue order, so each
        # stream's windows reach the handlers in time order.
        by_length: dict[int, list[int]] = {}
        for index, item in enumerate(batch):
            by_length.setdefault(item.window.mel.shape[1], []).append(index)
        outputs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for indices in by_length.values():
            items = [batch[i] for i in indices]
            probs, embeddings = self.infer(np.stack([item.window.mel for item in items]))
            self.batches.forward_passes += 1
            self.batches.windows += len(items)
            self.batches.multi_stream_passes += len({id(item.state) for item in items}) > 1
            for i, p, e in zip(indices, probs, embeddings, strict=True):
                outputs[i] = (p, e)
        for index, item in enumerate(batch):
            self._deliver(item, *outputs[index])

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
        )
        for handler in self.handlers:
            handler.on_result(result)
        if TAGS in item.purposes:
            state.counters.windows_tagged += 1
            state.last_t_end = t_end


@dataclass
class Collector:
    """A result handler that keeps every result in memory (offline tagging, tests)."""

    results: list[WindowResult] = field(default_factory=list)

    def on_result(self, result: WindowResult) -> None:
        self.results.append(result)

    def on_stream_end(self, stream: str) -> None:
        pass

    def on_tick(self) -> None:
        pass

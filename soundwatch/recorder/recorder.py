"""The recorder: every event's clip and history row, off the capture path.

:class:`Recorder` plugs into a run in three places:

- ``on_audio(stream, block)`` (the pipeline's audio tap, on the stream threads) copies each
  block into the stream's :class:`~soundwatch.recorder.ring.AudioRing`; nothing else;
- ``record_then(publish)`` wraps the event detector's publish callback (inference thread):
  each event gets its history id (``Event.record_id``) before it is published, and a job
  is queued for the writer;
- as a result handler it keeps each stream's speech scores (privacy) and hears stream ends.

One **writer thread** owns the disk: it inserts and completes history rows, cuts a clip
from the ring once the audio up to ``offset + post_roll`` (and the speech scores over it)
are in, checks privacy, writes the file, links it, and enforces retention.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf

from soundwatch.errors import SoundwatchError
from soundwatch.recorder.config import RecorderConfig
from soundwatch.recorder.history import CLIPS_DIR, History
from soundwatch.recorder.privacy import SpeechTrack, speech_indices
from soundwatch.recorder.retention import enforce
from soundwatch.recorder.ring import AudioRing, Cut
from soundwatch.results import TAGS, WindowResult
from soundwatch.sinks.messages import Event
from soundwatch.stream import AudioBlock
from soundwatch.stream.resample import TARGET_RATE

if TYPE_CHECKING:
    from soundwatch.events import EventsHandler

log = logging.getLogger(__name__)

#: Jobs waiting for the writer before new ones are dropped (counted): events are rare,
#: so reaching this means the disk is stuck.
MAX_JOBS = 10_000
#: Seconds a stream's end waits for its last clips (the inference thread waits).
STREAM_END_WAIT_S = 5.0
#: Seconds :meth:`Recorder.close` waits for the writer to finish the last clips.
CLOSE_TIMEOUT_S = 15.0
_FORMATS = {"flac": ("FLAC", "PCM_16"), "wav": ("WAV", "PCM_16"), "ogg": ("OGG", "VORBIS")}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class RecorderCounters:
    """Per stream: what became of its events' clips (published in ``status``)."""

    clips_written: int = 0
    clips_capped: int = 0  # longer than max_clip: cut there
    clips_private: int = 0  # dropped for privacy (speech heard, or privacy: no_clips)
    clips_no_audio: int = 0  # the audio was no longer in the ring
    clip_errors: int = 0  # the file could not be written
    jobs_dropped: int = 0  # the writer was stuck: events not recorded


@dataclass
class _Start:
    event: Event
    row_id: int
    thresholds: dict[str, Any]


@dataclass
class _End:
    event: Event
    row_id: int


@dataclass
class _StreamEnd:
    stream: str
    done: threading.Event = field(default_factory=threading.Event)  # its clips are written


@dataclass
class _Change:
    origin: str
    command: str
    detail: dict[str, Any]


_STOP = object()


@dataclass
class _Clip:
    """An event whose clip is not written yet."""

    row_id: int
    stream: str
    label: str
    onset: float
    t_from: float  # onset - pre_roll
    t_cap: float  # t_from + max_clip
    offset: float | None = None
    early: Cut | None = None  # cut at the cap while the event was still going on
    early_done: bool = False


@dataclass
class RecorderState:
    """What the writer thread alone touches."""

    pending: dict[int, _Clip] = field(default_factory=dict)
    ended_streams: set[str] = field(default_factory=set)
    waiting: list[_StreamEnd] = field(default_factory=list)


class Recorder:
    """Clips and history of a run's events (see the module docstring)."""

    def __init__(
        self,
        config: RecorderConfig,
        labels: list[str],
        model: str,
        thresholds_of: Callable[[str], dict[str, Any]] | None = None,
        streams: list[str] | None = None,
    ) -> None:
        if config.dir is None:
            raise SoundwatchError("the recorder needs recorder.dir (soundwatch run --record DIR)")
        self.config = config
        self.model = model
        self.thresholds_of = thresholds_of or (lambda label: {})
        self.history = History(config.dir)
        self.interrupted = self.history.close_interrupted()
        if self.interrupted:
            log.warning(
                "event history: %d events left open by a run that stopped were closed as "
                "interrupted",
                self.interrupted,
            )
        self.repair = self.history.repair()
        self._next_id = self.history.next_id()
        self._speech_index = speech_indices(labels) if config.privacy == "drop_speech" else None
        self.rings: dict[str, AudioRing] = {}
        self.speech: dict[str, SpeechTrack] = {}
        self._counters: dict[str, RecorderCounters] = {}
        self._open: dict[tuple[str, int], int] = {}  # (stream, detector event id) -> row id
        self._lock = threading.Lock()
        self._jobs: queue.Queue[object] = queue.Queue(MAX_JOBS)
        self._state = RecorderState()
        self.history_errors = 0
        for stream in streams or []:
            self._add_stream(stream)
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    # --- stream threads ------------------------------------------------------------
    def on_audio(self, stream: str, block: AudioBlock) -> None:
        """The pipeline's audio tap: copy the block into the stream's ring."""
        ring = self.rings.get(stream) or self._add_stream(stream)
        ring.write(block)

    def _add_stream(self, stream: str) -> AudioRing:
        with self._lock:
            if stream not in self.rings:
                self.rings[stream] = AudioRing(self.config.ring_seconds)
                windows = int(self.config.ring_seconds * 100) + 100  # generous: hop >= 10 ms
                self.speech[stream] = SpeechTrack(windows)
                self._counters[stream] = RecorderCounters()
            return self.rings[stream]

    def attach(self, events: EventsHandler | None) -> None:
        """Record ``events``' events: each gets its history id before it is published, and
        its row the group's settings in force."""
        if events is None:
            log.warning("recorder: events are disabled (events.enabled), so nothing is recorded")
            return
        self.thresholds_of = events.group_settings
        events.publish = self.record_then(events.publish)

    # --- inference thread ----------------------------------------------------------
    def record_then(self, publish: Callable[[Event], None]) -> Callable[[Event], None]:
        """Wrap an event publish callback: record the event, then publish it (with its
        ``record_id``)."""

        def record_then_publish(event: Event) -> None:
            self.on_event(event)
            publish(event)

        return record_then_publish

    def on_event(self, event: Event) -> None:
        key = (event.stream, event.event_id)
        if event.state == "start":
            row_id = self._next_id
            self._next_id += 1
            self._open[key] = row_id
            event.record_id = row_id
            self._put(event.stream, _Start(event, row_id, dict(self.thresholds_of(event.label))))
        else:
            row_id = self._open.pop(key, -1)
            event.record_id = row_id
            if row_id >= 0:
                self._put(event.stream, _End(event, row_id))

    def on_result(self, result: WindowResult) -> None:
        if self._speech_index is None or TAGS not in result.purposes:
            return
        track = self.speech.get(result.stream)
        if track is None:
            self._add_stream(result.stream)
            track = self.speech[result.stream]
        score = float(np.max(result.probs[self._speech_index]))
        track.add(result.t_start, result.t_end, score)

    def on_stream_end(self, stream: str) -> None:
        """The stream's last events are in: wait (bounded) until their clips are written,
        so the stream's final status counts them."""
        job = _StreamEnd(stream)
        self._put(stream, job)
        if not job.done.wait(STREAM_END_WAIT_S):
            log.warning("recorder: the clips of stream %s are still being written", stream)

    def on_tick(self) -> None:
        pass

    def record_change(self, origin: str, command: str, detail: dict[str, Any]) -> None:
        """Write a runtime change (control socket, MQTT, dashboard) to the history."""
        self._put(None, _Change(origin, command, detail))

    def _put(self, stream: str | None, job: object) -> None:
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            if stream is not None:
                self._add_stream(stream)
                self._counters[stream].jobs_dropped += 1
            log.error("recorder: the writer is stuck (disk?); an event was not recorded")

    # --- status --------------------------------------------------------------------
    def counters(self, stream: str) -> dict[str, int]:
        """The stream's recorder counters, prefixed ``recorder_``, for status messages."""
        counters = self._counters.get(stream)
        if counters is None:
            return {}
        out = {f"recorder_{name}": int(value) for name, value in vars(counters).items()}
        out["recorder_history_errors"] = self.history_errors
        return out

    # --- lifecycle -----------------------------------------------------------------
    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Write the clips still pending (with the audio there is) and close the history."""
        if not self._thread.is_alive():
            return
        self._jobs.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error(
                "recorder: the writer did not finish within %.0f s; clips may be missing"
                " (they are repaired at the next start)",
                timeout,
            )
            return
        self.history.close()

    # --- writer thread -------------------------------------------------------------
    def _run(self) -> None:
        stopping = False
        next_retention = 0.0
        while True:
            try:
                job = self._jobs.get(timeout=0.1)
            except queue.Empty:
                job = None
            try:
                if job is _STOP:
                    stopping = True
                elif job is not None:
                    self._handle(job)
                if not stopping or self._jobs.empty():
                    self._advance(final=stopping)
                if time.monotonic() >= next_retention:
                    next_retention = time.monotonic() + self.config.retention.interval
                    enforce(self.history, self.config.retention, time.time())
            except Exception:  # the writer must go on: count, log, keep recording
                self.history_errors += 1
                log.exception("recorder: writing the history failed")
            if stopping and self._jobs.empty() and not self._state.pending:
                return

    def _handle(self, job: object) -> None:
        state = self._state
        if isinstance(job, _Start):
            e = job.event
            self.history.insert_start(
                {
                    "id": job.row_id,
                    "stream": e.stream,
                    "label": e.label,
                    "event_id": e.event_id,
                    "onset": e.onset,
                    "peak": e.peak,
                    "model": self.model,
                    "thresholds": job.thresholds,
                }
            )
            t_from = e.onset - self.config.pre_roll
            state.pending[job.row_id] = _Clip(
                job.row_id, e.stream, e.label, e.onset, t_from, t_from + self.config.max_clip
            )
        elif isinstance(job, _End):
            e = job.event
            assert e.offset is not None
            self.history.update_end(job.row_id, e.offset, e.peak, "pending: clip being cut")
            if job.row_id in state.pending:
                state.pending[job.row_id].offset = e.offset
        elif isinstance(job, _StreamEnd):
            state.ended_streams.add(job.stream)
            state.waiting.append(job)
        elif isinstance(job, _Change):
            self.history.add_change(job.origin, job.command, job.detail)

    def _advance(self, final: bool) -> None:
        """Cut and write the clips whose audio (and speech scores) are in."""
        state = self._state
        for row_id, clip in list(state.pending.items()):
            ring = self.rings.get(clip.stream)
            head = ring.head_time() if ring is not None else None
            over = final or clip.stream in state.ended_streams
            if clip.offset is None:
                if (
                    ring is not None
                    and head is not None
                    and head >= clip.t_cap
                    and not clip.early_done
                ):
                    clip.early = ring.cut(clip.t_from, clip.t_cap, clip.onset)
                    clip.early_done = True
                if over:  # the stream ended without the event's end: the run was cut short
                    del state.pending[row_id]
                continue
            want_end = min(clip.offset + self.config.post_roll, clip.t_cap)
            audio_in = head is not None and head >= want_end
            speech_in = (
                self._speech_index is None or self.speech[clip.stream].known_until >= want_end
            )
            if not ((audio_in and speech_in) or over):
                continue
            del state.pending[row_id]
            if clip.early_done:  # cut at the cap before the end was known: keep what is due
                cut = clip.early.until(want_end) if clip.early is not None else None
            else:
                cut = ring.cut(clip.t_from, want_end, clip.onset) if ring is not None else None
            self._finish(clip, cut, want_end)
        busy = {clip.stream for clip in state.pending.values()}
        for job in [j for j in state.waiting if j.stream not in busy]:
            job.done.set()
            state.waiting.remove(job)

    def _finish(self, clip: _Clip, cut: Cut | None, want_end: float) -> None:
        counters = self._counters.setdefault(clip.stream, RecorderCounters())
        capped = clip.offset is not None and clip.offset + self.config.post_roll > clip.t_cap
        privacy = self.config.privacy
        if privacy == "no_clips":
            counters.clips_private += 1
            self.history.set_clip(clip.row_id, None, "privacy: recorder.privacy is no_clips")
            return
        if cut is None or len(cut.samples) == 0:
            counters.clips_no_audio += 1
            self.history.set_clip(
                clip.row_id,
                None,
                "no audio: it had left the audio ring before the event ended (inference far "
                "behind, or recorder.ring_slack too short)",
            )
            return
        if privacy == "drop_speech":
            score = self.speech[clip.stream].score(cut.t_start, cut.t_end)
            if score >= self.config.speech_threshold:
                counters.clips_private += 1
                self.history.set_clip(
                    clip.row_id,
                    None,
                    f"privacy: speech heard in the clip (score {score:.2f} >= "
                    f"{self.config.speech_threshold:g})",
                )
                return
        notes = []
        if capped:
            counters.clips_capped += 1
            notes.append(f"capped at recorder.max_clip ({self.config.max_clip:g} s)")
        if cut.t_start > clip.t_from + 1e-3:
            notes.append(f"pre-roll short by {cut.t_start - clip.t_from:.2f} s (no audio before)")
        if cut.t_end < want_end - 1e-3:
            notes.append(f"post-roll short by {want_end - cut.t_end:.2f} s (the stream ended)")
        try:
            relative, size = self._write(clip, cut)
        except (OSError, RuntimeError) as error:  # soundfile raises RuntimeError subclasses
            counters.clip_errors += 1
            log.error("recorder: cannot write the clip of event %d: %s", clip.row_id, error)
            self.history.set_clip(clip.row_id, None, f"write failed: {error}")
            return
        counters.clips_written += 1
        self.history.set_clip(
            clip.row_id,
            relative,
            "; ".join(notes) or None,
            (cut.t_start, cut.t_end),
            size,
            capped,
        )

    def _write(self, clip: _Clip, cut: Cut) -> tuple[str, int]:
        fmt = self.config.format
        day = time.strftime("%Y-%m-%d", time.localtime(clip.onset))
        name = f"{clip.row_id}-{_UNSAFE.sub('_', clip.stream)}-{_UNSAFE.sub('_', clip.label)}"
        folder = Path(self.history.dir) / CLIPS_DIR / day
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.{fmt}"
        partial = folder / f"{name}.part"
        file_format, subtype = _FORMATS[fmt]
        sf.write(partial, cut.samples, TARGET_RATE, format=file_format, subtype=subtype)
        os.replace(partial, path)
        return path.relative_to(self.history.dir).as_posix(), path.stat().st_size

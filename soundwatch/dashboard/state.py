"""What the dashboard remembers of each stream, bounded, as JSON-ready dicts.

The relay thread feeds every received message to :meth:`DashboardState.apply`, which
updates the stream's view and returns the update to push to open pages. A page opened
late first gets :meth:`DashboardState.snapshot`: the recent past at once (the timeline of
the last minutes, the last events, the last status, the last seconds of spectrogram).
Every update carries a revision number, so a page never applies one twice.

Everything kept is bounded: timeline columns by audio time and count, events and
spectrogram frames by count. A stream's view appears with its first message and stays
(marked ended or stale) when its pipeline stops; a restarted pipeline continues it.
"""

from __future__ import annotations

import base64
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from soundwatch.sinks.messages import Envelope, Event, Mel, Status, Tags

HISTORY_S = 300.0  # seconds of audio kept on the timeline
MAX_COLUMNS = 3000  # timeline columns kept at most, whatever the hop
EVENTS_KEPT = 100  # last events kept per stream
MEL_SECONDS = 12.0  # seconds of spectrogram kept per stream
MAX_MEL_FRAMES = 4096  # spectrogram frames kept at most, whatever the frame rate
LABELS_PER_COLUMN = 12  # labels kept per timeline column (the best by smoothed score)
LABEL_FLOOR = 0.02  # labels under this smoothed score are left out of timeline columns
GROUP_FLOOR = 0.005  # groups under this score too (half the lowest preset threshold)
TIME_JUMP_S = 1.0  # audio time going back more than this starts a new timeline


def _r(value: float, digits: int = 4) -> float:
    return round(float(value), digits)


@dataclass
class StreamView:
    """The recent past of one stream."""

    stream: str
    status: dict[str, Any] | None = None
    status_received: float | None = None  # time.monotonic() when the last status came
    status_seq: int | None = None  # seq of the last status: a restarted pipeline counts anew
    top: list[list[Any]] = field(default_factory=list)
    groups: dict[str, float] = field(default_factory=dict)
    t_end: float | None = None  # audio time of the newest tags window
    columns: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_COLUMNS))
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))
    mel: deque[dict[str, Any]] = field(default_factory=deque)
    mel_frames: int = 0
    next_event_key: int = 0

    def to_json(self) -> dict[str, Any]:
        age = None if self.status_received is None else time.monotonic() - self.status_received
        return {
            "stream": self.stream,
            "status": self.status,
            "status_age": None if age is None else _r(age, 2),
            "top": self.top,
            "groups": self.groups,
            "t_end": self.t_end,
            "columns": list(self.columns),
            "events": list(self.events),
            "mel": list(self.mel),
        }


class DashboardState:
    """All streams' views; safe to use from the relay thread and the web server at once."""

    def __init__(self, history_s: float = HISTORY_S, mel_seconds: float = MEL_SECONDS) -> None:
        self.history_s = history_s
        self.mel_seconds = mel_seconds
        self.streams: dict[str, StreamView] = {}
        self.labels: dict[str, list[str]] = {}  # stream -> label names from its status
        self.rev = 0
        self._lock = threading.Lock()

    def apply(self, message: Envelope) -> tuple[int, dict[str, Any]]:
        """Take one message into its stream's view; return ``(revision, update)``."""
        with self._lock:
            view = self.streams.get(message.stream)
            if view is None:
                view = self.streams[message.stream] = StreamView(message.stream)
            if isinstance(message, Tags):
                update = self._tags(view, message)
            elif isinstance(message, Status):
                update = self._status(view, message)
            elif isinstance(message, Event):
                update = self._event(view, message)
            elif isinstance(message, Mel):
                update = self._mel(view, message)
            else:  # a kind this dashboard does not show
                update = {"type": "ignored", "kind": message.kind}
            update["stream"] = message.stream
            self.rev += 1
            return self.rev, update

    def snapshot(self) -> tuple[int, dict[str, Any]]:
        """Every stream's view at this revision (what a newly opened page starts from)."""
        with self._lock:
            streams = [self.streams[name].to_json() for name in sorted(self.streams)]
            return self.rev, {"type": "snapshot", "streams": streams}

    # -- one method per kind -------------------------------------------------------------

    def _tags(self, view: StreamView, message: Tags) -> dict[str, Any]:
        reset = view.t_end is not None and message.t_end < view.t_end - TIME_JUMP_S
        if reset:  # audio time went back: a new time base (a replayed file, a new run)
            view.columns.clear()
            view.mel.clear()
            view.mel_frames = 0
        view.t_end = message.t_end
        view.top = [[label, _r(p)] for label, p in message.top]
        view.groups = {name: _r(score) for name, score in message.groups.items()}
        column = {
            "t": message.t_end,
            "g": {name: score for name, score in view.groups.items() if score >= GROUP_FLOOR},
            "l": self._column_labels(message),
        }
        view.columns.append(column)
        horizon = message.t_end - self.history_s
        while view.columns and view.columns[0]["t"] < horizon:
            view.columns.popleft()
        if reset:
            return {"type": "stream", "view": view.to_json()}
        return {
            "type": "tags",
            "t_end": message.t_end,
            "top": view.top,
            "groups": view.groups,
            "column": column,
        }

    def _column_labels(self, message: Tags) -> dict[str, float]:
        labels = self.labels.get(message.stream)
        scores = np.asarray(message.smoothed, dtype=np.float32)
        if labels is None or len(labels) != len(scores):  # no status yet: what tags carry
            return {label: _r(p) for label, p in message.top if p >= LABEL_FLOOR}
        k = min(LABELS_PER_COLUMN, len(scores))
        best = np.argpartition(scores, -k)[-k:]
        return {labels[i]: _r(scores[i]) for i in best if scores[i] >= LABEL_FLOOR}

    def _status(self, view: StreamView, message: Status) -> dict[str, Any]:
        if message.labels:
            self.labels[message.stream] = list(message.labels)
        new_run = view.status_seq is not None and message.seq <= view.status_seq
        view.status_seq = message.seq
        view.status_received = time.monotonic()
        view.status = {
            "model": message.model,
            "window": message.window,
            "hop": message.hop,
            "source": message.source,
            "counters": message.counters,
            "latency": {name: _r(value, 5) for name, value in message.latency.items()},
            "groups": {name: _r(threshold) for name, threshold in message.groups.items()},
            "events_window": message.events_window,
            "events_hop": message.events_hop,
            "ended": message.ended,
            "t_start": message.t_start,
            "t_end": message.t_end,
            "t_pub": message.t_pub,
            "seq": message.seq,
        }
        if new_run and self._close_open_events(view):  # the old run's open events never end
            return {"type": "stream", "view": view.to_json()}
        return {"type": "status", "status": view.status, "status_age": 0.0}

    def _close_open_events(self, view: StreamView) -> bool:
        closed = False
        for entry in view.events:
            if entry["state"] == "start":
                entry["state"] = "interrupted"
                closed = True
        return closed

    def _event(self, view: StreamView, message: Event) -> dict[str, Any]:
        entry = None
        if message.state == "end":  # the start this end closes, if still kept
            entry = next(
                (
                    e
                    for e in reversed(view.events)
                    if e["id"] == message.event_id
                    and e["label"] == message.label
                    and e["state"] == "start"
                ),
                None,
            )
        if entry is None:
            entry = {"key": view.next_event_key, "id": message.event_id, "label": message.label}
            view.next_event_key += 1
            view.events.append(entry)
        entry.update(
            state=message.state,
            onset=message.onset,
            offset=message.offset,
            peak=_r(message.peak),
        )
        return {"type": "event", "event": dict(entry)}

    def _mel(self, view: StreamView, message: Mel) -> dict[str, Any]:
        frames = np.ascontiguousarray(message.frames, dtype=np.uint8)
        chunk = {
            "frames": base64.b64encode(frames.tobytes()).decode("ascii"),
            "n": int(frames.shape[0]),
            "bins": int(message.bins),
            "frame_rate": float(message.frame_rate),
            "lo": float(message.lo),
            "hi": float(message.hi),
            "t_end": message.t_end,
        }
        if view.mel and (
            view.mel[-1]["bins"] != chunk["bins"]
            or view.mel[-1]["frame_rate"] != chunk["frame_rate"]
        ):  # another frontend (a restarted pipeline with another config): start again
            view.mel.clear()
            view.mel_frames = 0
        view.mel.append(chunk)
        view.mel_frames += chunk["n"]
        keep = min(MAX_MEL_FRAMES, int(self.mel_seconds * max(chunk["frame_rate"], 1.0)))
        while len(view.mel) > 1 and view.mel_frames - view.mel[0]["n"] >= keep:
            view.mel_frames -= view.mel.popleft()["n"]
        return {"type": "mel", "chunk": chunk}

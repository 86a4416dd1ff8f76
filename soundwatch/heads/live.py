"""Heads in a run: loaded at start, checked against the backbone, reloaded while running.

:class:`HeadBank` holds the heads of the configured files and folders (``heads.paths``,
``--head``) and reloads them when a file changes, appears or goes away (checked every
``heads.watch`` seconds on the inference thread: a ``stat`` per file). A head that fails
to load while running is logged and counted (``heads_load_errors`` in status) and the bank
keeps what it had; at start it is an error.

:class:`HeadsHandler` is the pipeline result handler: per window it applies every head to
the window's features (built once per window for all heads: the embedding and the square
roots of the AudioSet probabilities; then one small matrix product per head), smooths the
head probabilities per stream like the tags, and runs an event detector per stream on them,
so a head's labels become event groups (``events.<stream>`` messages, group scores in
``tags`` and thresholds in ``status``, hence the dashboard and MQTT) with the head's own
calibrated thresholds. The live publisher asks it for a window's fields (:meth:`tag_fields`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soundwatch.errors import SoundwatchError
from soundwatch.events.config import EventsConfig, GroupConfig
from soundwatch.events.detector import DetectorSettings, EventDetector
from soundwatch.events.groups import Group
from soundwatch.heads.fileformat import HEAD_SUFFIX, Head, head_features, load_head
from soundwatch.results import TAGS, WindowResult
from soundwatch.sinks.messages import Event
from soundwatch.sinks.smoothing import TagSmoother

log = logging.getLogger(__name__)

HEAD_EVENT_IDS = 1 << 40  # first event id of head events (group events count from 0)


@dataclass(frozen=True)
class RunBackbone:
    """What the run's embeddings come from: heads must have been learned on the same."""

    model: str
    weights_sha256: str
    window_s: float


def head_files(paths: Sequence[Path]) -> list[Path]:
    """The head files named: files as given, folders as the ``*.swhead`` files in them."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(path.glob(f"*{HEAD_SUFFIX}")))
        else:
            found.append(path)
    return found


class HeadBank:
    """The run's heads and their stacked labels; :meth:`poll` reloads changed files."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        backbone: RunBackbone,
        reserved: Sequence[str] = (),
        watch_s: float = 1.0,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.backbone = backbone
        self.reserved = set(reserved)  # names taken by event groups
        self.watch_s = watch_s
        self.heads: list[Head] = []
        self.labels: list[str] = []
        self.thresholds = np.zeros(0, dtype=np.float32)
        self.version = 0  # bumped on every change of the loaded heads
        self.load_errors = 0
        self.last_error = ""
        self._stamps: dict[Path, tuple[int, int]] = {}
        self._next_check = 0.0
        if self.paths:
            for path in self.paths:
                if not path.exists():
                    raise SoundwatchError(
                        f"head file or folder not found: {str(path)!r} (heads.paths / --head)"
                    )
            self._install(*self._load())

    def __len__(self) -> int:
        return len(self.labels)

    def _scan(self) -> dict[Path, tuple[int, int]]:
        stamps = {}
        for path in head_files(self.paths):
            try:
                st = path.stat()
            except OSError:
                continue  # gone: dropped from the bank on this reload
            stamps[path] = (st.st_mtime_ns, st.st_size)
        return stamps

    def _load(self) -> tuple[list[Head], dict[Path, tuple[int, int]]]:
        stamps = self._scan()
        heads = []
        for path in stamps:
            head = load_head(path)
            b = self.backbone
            head.check_compatible(b.model, b.weights_sha256, b.window_s)
            heads.append(head)
        labels = [label for head in heads for label in head.labels]
        for label in labels:
            if labels.count(label) > 1:
                raise SoundwatchError(
                    f"head label {label!r} is in two heads; rename it in one (learn it again "
                    "with another LABEL)"
                )
            if label in self.reserved:
                raise SoundwatchError(
                    f"head label {label!r} is also an event group's name; learn the head "
                    "with another LABEL or rename the group"
                )
        return heads, stamps

    def _install(self, heads: list[Head], stamps: dict[Path, tuple[int, int]]) -> None:
        self.heads = heads
        self.labels = [label for head in heads for label in head.labels]
        self.thresholds = (
            np.concatenate([h.thresholds for h in heads]).astype(np.float32)
            if heads
            else np.zeros(0, dtype=np.float32)
        )
        self._stamps = stamps
        self.version += 1
        names = ", ".join(f"{h.name} ({', '.join(h.labels)})" for h in heads) or "none"
        log.info("heads loaded: %s", names)

    def poll(self, now: float | None = None) -> bool:
        """Reload when a head file changed, appeared or went away; True when the heads did."""
        if not self.paths or self.watch_s <= 0:
            return False
        now = time.monotonic() if now is None else now
        if now < self._next_check:
            return False
        self._next_check = now + self.watch_s
        if self._scan() == self._stamps:
            return False
        try:
            heads, stamps = self._load()
        except SoundwatchError as error:
            self._stamps = self._scan()  # do not retry the same broken file every second
            self.load_errors += 1
            self.last_error = str(error)
            log.error("head not reloaded, keeping the heads loaded before: %s", error)
            return False
        self._install(heads, stamps)
        return True

    def predict(self, embedding: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """``[D]`` or ``[B, D]`` embeddings (with the windows' AudioSet probabilities) ->
        every head's probabilities, stacked by label."""
        if not self.heads:
            return np.zeros((*np.shape(embedding)[:-1], 0), dtype=np.float32)
        features: dict[str, np.ndarray] = {}  # per kind of inputs: built once per window
        out = []
        for head in self.heads:
            x = features.get(head.inputs)
            if x is None:
                x = features[head.inputs] = head_features(embedding, probs, head.inputs)
            out.append(head.apply(x))
        return out[0] if len(out) == 1 else np.concatenate(out, axis=-1)


class HeadsHandler:
    """Applies the bank's heads to each tag window: fields for ``tags``, and events."""

    def __init__(
        self,
        bank: HeadBank,
        publish: Callable[[Event], None],
        events: EventsConfig | None,
        hop_s: float,
        smoothing: str = "ema",
        smoothing_width: float = 1.0,
    ) -> None:
        self.bank = bank
        self.publish = publish
        self.events = events if events is not None and events.enabled else None
        self.hop_s = hop_s
        self.smoothing = (smoothing, smoothing_width)
        self.smoothers: dict[str, TagSmoother] = {}
        self.detectors: dict[str, EventDetector] = {}
        self._settings: DetectorSettings | None = None
        self._last: tuple[WindowResult, dict[str, float], dict[str, float]] | None = None
        self._ids: dict[tuple[str, int, int], int] = {}  # open events: detector id -> id
        self._next_id = HEAD_EVENT_IDS
        self._generation = 0
        self._rebuild()

    def _rebuild(self) -> None:
        """New heads: end the open events of the old ones, start afresh with the new."""
        for stream in list(self.detectors):
            self.on_stream_end(stream)
        self.detectors.clear()
        self._generation += 1  # the new detectors count their ids from 0 again
        self.smoothers.clear()
        self._last = None
        self._settings = None
        if self.events is not None and self.bank.labels:
            config = self.events.model_copy(
                update={
                    "window": self.bank.backbone.window_s,
                    "hop": self.hop_s,
                    "preset": None,
                    "groups": {
                        label: GroupConfig(labels=[label], threshold_on=max(float(t), 1e-3))
                        for label, t in zip(self.bank.labels, self.bank.thresholds, strict=True)
                    },
                }
            )
            groups = [Group(label, (i,)) for i, label in enumerate(self.bank.labels)]
            self._settings = DetectorSettings.from_config(config, groups)

    def tag_fields(self, result: WindowResult) -> tuple[dict[str, float], dict[str, float]]:
        """The window's head probabilities (raw) and the heads' smoothed group scores."""
        if self._last is not None and self._last[0] is result:
            return self._last[1], self._last[2]
        if not self.bank.labels or TAGS not in result.purposes:
            return {}, {}
        probs = self.bank.predict(result.embedding, result.probs)
        smoother = self.smoothers.get(result.stream)
        if smoother is None:
            smoother = TagSmoother(*self.smoothing, self.hop_s)
            self.smoothers[result.stream] = smoother
        smoothed = smoother.push(probs)
        if result.final:
            smoother.reset()
        labels = self.bank.labels
        raw = dict(zip(labels, probs.tolist(), strict=True))
        scores = dict(zip(labels, smoothed.tolist(), strict=True))
        self._last = (result, raw, scores)
        if self._settings is not None:
            detector = self.detectors.get(result.stream)
            if detector is None:
                detector = EventDetector(self._settings, result.stream)
                self.detectors[result.stream] = detector
            for message in detector.push(dataclasses.replace(result, probs=probs)):
                self._publish(message)
        return raw, scores

    def _publish(self, event: Event) -> None:
        """Publish with an id of the heads' own range, unique in the stream across reloads
        (the detectors of the event groups count from 0)."""
        key = (event.stream, self._generation, event.event_id)
        if event.state == "start":
            self._ids[key] = self._next_id
            self._next_id += 1
        event_id = self._ids.pop(key) if event.state == "end" else self._ids[key]
        self.publish(dataclasses.replace(event, event_id=event_id))

    def group_thresholds(self) -> dict[str, float]:
        """Each head label's threshold (the event threshold_on), for status messages."""
        return dict(zip(self.bank.labels, self.bank.thresholds.tolist(), strict=True))

    def counters(self, stream: str) -> dict[str, int]:
        """Head counters for status: labels loaded, reloads, failed reloads, events."""
        detector = self.detectors.get(stream)
        return {
            "heads_labels": len(self.bank.labels),
            "heads_version": self.bank.version,
            "heads_load_errors": self.bank.load_errors,
            "heads_events": detector.counters.events if detector is not None else 0,
        }

    # -- ResultHandler --------------------------------------------------------------------

    def on_result(self, result: WindowResult) -> None:
        self.tag_fields(result)

    def on_stream_end(self, stream: str) -> None:
        detector = self.detectors.get(stream)
        if detector is not None:
            for message in detector.finish():
                self._publish(message)
        smoother = self.smoothers.get(stream)
        if smoother is not None:
            smoother.reset()

    def on_tick(self) -> None:
        if self.bank.poll():
            self._rebuild()

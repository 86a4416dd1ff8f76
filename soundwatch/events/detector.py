"""Sound events of one stream from its window results, as soon as they are known.

Per window the classes of each group are pooled (max, or a calibrated group's logistic
score, see :mod:`~soundwatch.events.groups`); per time step of ``step`` seconds
the windows covering the step vote (:mod:`~soundwatch.events.agreement`); the step scores
are smoothed (:mod:`~soundwatch.events.smoothing`) and turned into events by hysteresis,
gap bridging and a minimum duration (:mod:`~soundwatch.events.hysteresis`). Both ends of
an event are then moved inwards by ``trim`` seconds.

:class:`EventDetector` does this incrementally on :class:`~soundwatch.results.WindowResult`
objects and emits :class:`~soundwatch.sinks.messages.Event` start/end messages;
:func:`detect_events_offline` does it on a whole recording's windows at once and gives the
same events (tests check this).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from soundwatch.dsp.windows import FRAMES_PER_SECOND, seconds_to_frames
from soundwatch.errors import SoundwatchError
from soundwatch.events.agreement import StepAggregator, aggregate_steps
from soundwatch.events.config import DEFAULT_OFF_RATIO, EventsConfig, GroupConfig
from soundwatch.events.groups import (
    Group,
    ScoreTable,
    group_scores,
    load_ontology,
    resolve_groups,
)
from soundwatch.events.hysteresis import HysteresisTracker, Span, Thresholds, Update, find_spans
from soundwatch.events.smoothing import Smoother, smooth
from soundwatch.results import WindowResult
from soundwatch.sinks.messages import Event
from soundwatch.validation import check_off_not_above_on

SEGMENT_JUMP_S = 0.1  # a window whose stream origin moved this much starts a new segment


@dataclass(frozen=True)
class DetectorSettings:
    """Everything a detector needs, resolved from :class:`EventsConfig` and the model."""

    groups: list[Group]
    window_frames: int
    hop_frames: int
    step_frames: int
    quantile: float
    trim_s: float
    smoothing: str
    smoothing_width_s: float
    thresholds: Thresholds
    score_table: ScoreTable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "score_table", ScoreTable.of(self.groups))

    @property
    def step_s(self) -> float:
        return self.step_frames / FRAMES_PER_SECOND

    @property
    def labels(self) -> list[str]:
        return [g.name for g in self.groups]

    @classmethod
    def from_config(cls, config: EventsConfig, groups: Sequence[Group]) -> DetectorSettings:
        """Settings for already resolved ``groups`` (see :func:`build_settings`)."""
        specs = config.all_groups()
        step_s = seconds_to_frames(config.step) / FRAMES_PER_SECOND
        off_ratio = (
            config.threshold_off / config.threshold_on
            if config.threshold_off is not None
            else DEFAULT_OFF_RATIO
        )
        on, off, min_steps, max_gap = [], [], [], []
        for group in groups:
            spec = specs.get(group.name) or GroupConfig(labels=[group.name])
            g_on = config.threshold_on if spec.threshold_on is None else spec.threshold_on
            g_off = g_on * off_ratio if spec.threshold_off is None else spec.threshold_off
            try:  # each bound may come from the group or the defaults
                check_off_not_above_on(g_off, g_on)
            except ValueError as error:
                raise SoundwatchError(f"events.groups.{group.name}: {error}") from None
            duration = config.min_duration if spec.min_duration is None else spec.min_duration
            gap = config.max_gap if spec.max_gap is None else spec.max_gap
            on.append(g_on)
            off.append(g_off)
            min_steps.append(math.ceil(duration / step_s - 1e-9))
            max_gap.append(math.floor(gap / step_s + 1e-9))
        thresholds = Thresholds(
            on=np.asarray(on, dtype=np.float32),
            off=np.asarray(off, dtype=np.float32),
            min_steps=np.asarray(min_steps, dtype=np.int64),
            max_gap_steps=np.asarray(max_gap, dtype=np.int64),
            lead_ratio=1.0 if config.lead_in is None else config.lead_in,
            max_lead_steps=0 if config.lead_in is None else round(config.max_lead_in / step_s),
        )
        return cls(
            groups=list(groups),
            window_frames=seconds_to_frames(config.window),
            hop_frames=seconds_to_frames(config.hop),
            step_frames=seconds_to_frames(config.step),
            quantile=1.0 - config.agreement,
            trim_s=config.trim,
            smoothing=config.smoothing.method,
            smoothing_width_s=config.smoothing.width,
            thresholds=thresholds,
        )


def build_settings(
    config: EventsConfig,
    labels: Sequence[str],
    mids: Sequence[str],
    find_ontology: Callable[[], Path] | None = None,
) -> DetectorSettings:
    """Resolve groups against the model's classes, loading the ontology only when a group
    names subtrees: ``config.ontology``, else the path ``find_ontology()`` gives (the
    runner passes one that looks beside the model's weights)."""
    specs = config.all_groups()
    ontology = None
    if any(spec.subtrees for spec in specs.values()):
        path = config.ontology
        if path is None and find_ontology is None:
            raise SoundwatchError(
                "event groups name ontology subtrees but no ontology.json is known; set "
                "events.ontology to its path"
            )
        ontology = load_ontology(path if path is not None else find_ontology())
    groups = resolve_groups(specs, labels, mids, ontology)
    return DetectorSettings.from_config(config, groups)


@dataclass(frozen=True)
class DetectedEvent:
    """A finished event; times in seconds from the stream's (segment's) first frame."""

    event_id: int
    label: str
    onset: float
    offset: float
    peak: float


def _span_times(settings: DetectorSettings, start: int, end: int) -> tuple[float, float]:
    """Step span ``[start, end)`` -> (onset, offset) seconds, trimmed at both ends."""
    onset = start * settings.step_s + settings.trim_s
    offset = max(end * settings.step_s - settings.trim_s, onset + settings.step_s)
    return onset, offset


def detect_events_offline(
    starts: np.ndarray,
    stops: np.ndarray,
    probs: np.ndarray,
    settings: DetectorSettings,
    first_event_id: int = 0,
) -> list[DetectedEvent]:
    """Events of a whole recording from its windows (frames ``[start, stop)`` and class
    probabilities ``[N, num_classes]``), in the order a live detector announces them."""
    if len(starts) == 0:
        return []
    scores = group_scores(np.asarray(probs, dtype=np.float32), settings.score_table)
    steps, _ = aggregate_steps(starts, stops, scores, settings.step_frames, settings.quantile)
    smoothed = smooth(steps, settings.smoothing, settings.smoothing_width_s, settings.step_s)
    spans: list[Span] = find_spans(smoothed, settings.thresholds)
    events = []
    for i, span in enumerate(spans):
        onset, offset = _span_times(settings, span.start, span.end)
        label = settings.groups[span.group].name
        events.append(DetectedEvent(first_event_id + i, label, onset, offset, span.peak))
    return events


@dataclass
class DetectorCounters:
    """What one stream's detector saw and could not use."""

    windows: int = 0
    late_windows: int = 0  # came after a step they cover was final (used for later steps)
    uncovered_steps: int = 0  # no window covered them (dropped windows): scored 0
    segments: int = 0
    events: int = 0


@dataclass
class EventDetector:
    """Streaming events of one stream: push its window results in time order.

    Events are announced once confirmed (``min_duration`` reached) and ended once the
    score stayed below ``threshold_off`` for longer than ``max_gap``; :meth:`finish`
    ends whatever is open (call it when the stream ends). A window with ``final`` set, or
    one whose frame count restarted (the pipeline resynchronised the stream), ends the
    current segment first.
    """

    settings: DetectorSettings
    stream: str
    counters: DetectorCounters = field(default_factory=DetectorCounters)

    def __post_init__(self) -> None:
        s = self.settings
        self._aggregator = StepAggregator(s.step_frames, s.quantile, len(s.groups))
        self._smoother = Smoother(s.smoothing, s.smoothing_width_s, s.step_s)
        self._tracker = HysteresisTracker(s.thresholds)
        self._next_id = 0
        self._open_ids: dict[int, int] = {}  # group -> event id of its announced event
        self._origin: float | None = None  # Unix time of the segment's frame 0
        self._last_start = -1

    @property
    def latency_s(self) -> float:
        """At most how long after the start of a step its score is final (window, step and
        smoothing latency); an event is announced this long after it reached min_duration."""
        s = self.settings
        return (s.window_frames + s.step_frames) / FRAMES_PER_SECOND + (
            self._smoother.latency_steps * s.step_s
        )

    def push(self, result: WindowResult) -> list[Event]:
        """One window result of this stream -> the event messages it makes known."""
        if result.stream != self.stream:
            raise SoundwatchError(
                f"event detector of stream {self.stream!r} got a window of {result.stream!r}; "
                "use one detector per stream"
            )
        length = result.stop_frame - result.start_frame
        if length != self.settings.window_frames and not (
            result.final and length < self.settings.window_frames
        ):
            raise SoundwatchError(
                f"stream {self.stream}: the event detector expects windows of "
                f"{self.settings.window_frames / FRAMES_PER_SECOND} s (events.window) but got "
                f"{length / FRAMES_PER_SECOND} s; feed it windows of events.window every "
                "events.hop seconds"
            )
        origin = result.t_start - result.start_frame / FRAMES_PER_SECOND
        messages: list[Event] = []
        if self._origin is not None and (
            result.start_frame < self._last_start or abs(origin - self._origin) > SEGMENT_JUMP_S
        ):
            messages.extend(self.finish())
        if self._origin is None:
            self._origin = origin
            self.counters.segments += 1
        self._last_start = result.start_frame
        self.counters.windows += 1
        scores = group_scores(
            np.asarray(result.probs, dtype=np.float32)[None], self.settings.score_table
        )
        steps = self._aggregator.push(result.start_frame, result.stop_frame, scores[0])
        self._sync_counters()
        messages.extend(self._run_steps(steps))
        if result.final:
            messages.extend(self.finish())
        return messages

    def set_thresholds(self, thresholds: Thresholds) -> None:
        """A runtime change (the control endpoint): the hysteresis reads ``thresholds``
        from the next step on; open events go on and end by the new values."""
        if len(thresholds.on) != len(self.settings.groups):
            raise SoundwatchError("thresholds must give one value per group")
        self.settings = replace(self.settings, thresholds=thresholds)
        self._tracker.t = thresholds

    def finish(self) -> list[Event]:
        """End the segment: score its last steps, close open events, start afresh."""
        if self._origin is None:
            return []
        messages = self._run_steps(self._aggregator.finish())
        messages.extend(self._emit(u) for u in self._feed_tracker(self._smoother.finish()))
        messages.extend(self._emit(u) for u in self._tracker.finish())
        self._sync_counters()
        self._reset()
        return messages

    def _sync_counters(self) -> None:
        """Keep the damage counters current (status reads them during a live run)."""
        self.counters.late_windows = self._aggregator.late_windows
        self.counters.uncovered_steps = self._aggregator.uncovered_steps

    def _reset(self) -> None:
        """Forget the finished segment (only after :meth:`finish` closed its events)."""
        self._aggregator.reset()
        self._smoother.reset()
        self._tracker.reset()
        self._open_ids.clear()
        self._origin = None
        self._last_start = -1

    def _run_steps(self, steps: list[tuple[int, np.ndarray]]) -> list[Event]:
        smoothed: list[tuple[int, np.ndarray]] = []
        for k, value in steps:
            smoothed.extend(self._smoother.push(k, value))
        return [self._emit(u) for u in self._feed_tracker(smoothed)]

    def _feed_tracker(self, smoothed: list[tuple[int, np.ndarray]]) -> list[Update]:
        """Steps in order -> updates; consecutive steps sharing one value (the aggregator
        gives the steps between two window edges the same array) go in as one run."""
        updates: list[Update] = []
        i = 0
        while i < len(smoothed):
            k, value = smoothed[i]
            count = 1
            while (
                i + count < len(smoothed)
                and smoothed[i + count][1] is value
                and smoothed[i + count][0] == k + count
            ):
                count += 1
            updates.extend(self._tracker.push_run(k, count, value))
            i += count
        return updates

    def _emit(self, update: Update) -> Event:
        assert self._origin is not None
        onset, offset = _span_times(self.settings, update.start, update.end)
        if update.state == "start":
            event_id = self._next_id
            self._next_id += 1
            self._open_ids[update.group] = event_id
            self.counters.events += 1
        else:
            event_id = self._open_ids.pop(update.group)
        return Event(
            stream=self.stream,
            t_start=self._origin + onset,
            t_end=self._origin + offset,
            event_id=event_id,
            label=self.settings.groups[update.group].name,
            state=update.state,
            onset=self._origin + onset,
            offset=self._origin + offset if update.state == "end" else None,
            peak=update.peak,
        )


def detected_from_messages(messages: Sequence[Event], origin: float = 0.0) -> list[DetectedEvent]:
    """Pair start/end messages into finished events (times relative to ``origin``)."""
    starts = {m.event_id: m for m in messages if m.state == "start"}
    out = []
    for m in messages:
        if m.state == "end" and m.event_id in starts and m.offset is not None:
            out.append(
                DetectedEvent(m.event_id, m.label, m.onset - origin, m.offset - origin, m.peak)
            )
    out.sort(key=lambda e: e.event_id)
    return out

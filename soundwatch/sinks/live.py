"""Turn window results into published ``tags``, ``embeddings``, ``mel`` and periodic
``status`` messages.

Runs on the pipeline's inference thread. Per stream it smooths the tag probabilities
across windows (:class:`~soundwatch.sinks.smoothing.TagSmoother`) and scores the event
groups on the smoothed values; it measures capture-to-publish latency (from the last audio
of a window entering its source to the window's message leaving the socket) and reports
percentiles, counters and the model's labels in ``status`` every few seconds and once
when a stream ends.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from soundwatch.events.groups import ScoreTable, group_scores
from soundwatch.results import TAGS, StreamReport, WindowResult
from soundwatch.sinks.mel import MEL_INTERVAL_S, MelTap
from soundwatch.sinks.messages import Embedding, Status, Tags
from soundwatch.sinks.publisher import Publisher
from soundwatch.sinks.smoothing import TagSmoother

LATENCY_HISTORY = 2048  # windows kept per stream for latency percentiles
WANTS_INTERVAL_S = 0.5  # how often an ``auto`` topic re-checks the subscriptions, at most


def top_labels(probs: np.ndarray, labels: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` most probable labels with their probabilities, best first."""
    order = np.argsort(probs)[::-1][:k]
    return [(labels[i], float(probs[i])) for i in order]


def labels_digest(labels: Sequence[str]) -> str:
    """sha256 of the labels joined by newlines: lets a subscriber check its label list."""
    return hashlib.sha256("\n".join(labels).encode()).hexdigest()


@dataclass(frozen=True)
class GroupTable:
    """The event groups as tags and status carry them: names, how the detector scores
    them (its :class:`ScoreTable`) and each group's ``threshold_on``."""

    names: list[str]
    table: ScoreTable
    thresholds: list[float]

    def scores(self, probs: np.ndarray) -> dict[str, float]:
        """Each group's score as the event detector computes it (the highest probability
        among its classes, or a calibrated group's logistic score), so it compares with
        the group's threshold."""
        values = group_scores(np.asarray(probs), self.table)
        return dict(zip(self.names, values.tolist(), strict=True))


@dataclass(frozen=True)
class LiveSettings:
    """What the live publisher says about the run, and how it smooths."""

    model_name: str
    labels: list[str]
    window_s: float
    hop_s: float
    events_window: tuple[float, float] | None = None
    top_k: int = 5
    status_interval: float = 5.0
    smoothing: str = "ema"
    smoothing_width: float = 1.0
    mel: str = "auto"  # auto (while a subscriber asks for mel.) | on | off
    embeddings: str = "auto"  # auto (while a subscriber asks for embeddings.) | on | off
    groups: GroupTable | None = None
    backend: str = ""  # what runs the model ("onnx/cpu", "torch/cuda"), shown in status
    labels_sha256: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels_sha256", labels_digest(self.labels))


class OptionalTopic:
    """Whether to publish a costly optional topic (``mel``, ``embeddings``): always when its
    setting is ``on``, never when ``off``, and with ``auto`` while a subscriber asked for
    its prefix explicitly. ``auto`` asks the publisher at most every ``interval`` s (asking
    the socket per window would cost more); :attr:`next_check` 0 asks at the next call."""

    def __init__(
        self, publisher: Publisher, prefix: str, mode: str, interval: float = WANTS_INTERVAL_S
    ) -> None:
        self.publisher = publisher
        self.prefix = prefix
        self.mode = mode
        self.interval = interval
        self.next_check = 0.0  # monotonic time of the next ``auto`` check (at once first)
        self._wanted = mode == "on"

    def wanted(self, now: float | None = None) -> bool:
        """Whether to publish the topic now (``now``: the caller's ``time.monotonic()``)."""
        if self.mode == "auto":
            now = time.monotonic() if now is None else now
            if now >= self.next_check:
                self.next_check = now + self.interval
                self._wanted = self.publisher.wants(self.prefix)
        return self._wanted


class HeadFields(Protocol):
    """Custom-sound heads applied to a run's windows (``soundwatch.heads.live``)."""

    def tag_fields(self, result: WindowResult) -> tuple[dict[str, float], dict[str, float]]:
        """The window's head probabilities and the heads' smoothed group scores."""
        ...

    def group_thresholds(self) -> dict[str, float]: ...


class LivePublisher:
    """A pipeline result handler that publishes ``tags``, ``mel`` and ``status`` messages.

    ``reports`` gives every stream's current :class:`~soundwatch.results.StreamReport`;
    ``extra_counters(stream)`` adds counters of other stages (the event detectors').
    """

    def __init__(
        self,
        publisher: Publisher,
        settings: LiveSettings,
        reports: Callable[[], Sequence[StreamReport]],
        extra_counters: Callable[[str], dict[str, int]] | None = None,
        mel_tap: MelTap | None = None,
        heads: HeadFields | None = None,
        inference: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        self.publisher = publisher
        self.settings = settings
        self.reports = reports
        self.extra_counters = extra_counters
        self.mel_tap = mel_tap
        self.heads = heads
        self.inference = inference  # the run's inference batch counters, for status
        self.latencies: dict[str, deque[float]] = {}
        self.smoothers: dict[str, TagSmoother] = {}
        self._next_status = time.monotonic()  # first status at once: subscribers learn labels
        self._next_mel = time.monotonic()
        # mel is checked on each of its own ticks (every MEL_INTERVAL_S), embeddings per window
        self.mel_topic = OptionalTopic(publisher, "mel", settings.mel, interval=0.0)
        self.embeddings_topic = OptionalTopic(publisher, "embeddings", settings.embeddings)

    def on_result(self, result: WindowResult) -> None:
        if TAGS not in result.purposes:
            return
        s = self.settings
        smoother = self.smoothers.get(result.stream)
        if smoother is None:
            smoother = TagSmoother(s.smoothing, s.smoothing_width, s.hop_s)
            self.smoothers[result.stream] = smoother
        probs = result.probs.astype(np.float32, copy=False)
        smoothed = smoother.push(probs)
        if result.final:  # the stream's audio restarts after this window
            smoother.reset()
        groups = s.groups.scores(smoothed) if s.groups is not None else {}
        head: dict[str, float] = {}
        if self.heads is not None:
            head, head_groups = self.heads.tag_fields(result)
            groups.update(head_groups)
        self.publisher.publish(
            Tags(
                stream=result.stream,
                t_start=result.t_start,
                t_end=result.t_end,
                probs=probs,
                top=top_labels(smoothed, s.labels, s.top_k),
                smoothed=smoothed,
                groups=groups,
                head=head,
                carried=result.carried,
            )
        )
        if self.embeddings_topic.wanted():
            self.publisher.publish(
                Embedding(
                    stream=result.stream,
                    t_start=result.t_start,
                    t_end=result.t_end,
                    embedding=result.embedding.astype(np.float32, copy=False),
                )
            )
        latencies = self.latencies.setdefault(result.stream, deque(maxlen=LATENCY_HISTORY))
        latencies.append(time.monotonic() - result.t_ingest)

    def on_tick(self) -> None:
        now = time.monotonic()
        if self.mel_tap is not None and now >= self._next_mel:
            self._next_mel = now + MEL_INTERVAL_S
            self.mel_tap.active = self.mel_topic.wanted(now)
            for message in self.mel_tap.messages():
                self.publisher.publish(message)
        if now >= self._next_status:
            self.publish_status()

    def on_stream_end(self, stream: str) -> None:
        if self.mel_tap is not None:
            for message in self.mel_tap.messages():
                self.publisher.publish(message)
        self.publish_status(only=stream)

    def publish_status(self, only: str | None = None) -> None:
        """Publish one status message per stream (or for ``only``)."""
        if only is None:
            self._next_status = time.monotonic() + self.settings.status_interval
        for report in self.reports():
            if only is None or report.stream == only:
                self.publisher.publish(self.status_of(report))

    def status_of(self, report: StreamReport) -> Status:
        s = self.settings
        counters = dict(report.counters)
        if self.extra_counters is not None:
            counters.update(self.extra_counters(report.stream))
        if self.mel_tap is not None:
            counters["mel_dropped_frames"] = self.mel_tap.dropped_frames.get(report.stream, 0)
        t_first = report.t_first if report.t_first is not None else time.time()
        events_window, events_hop = s.events_window or (0.0, 0.0)
        return Status(
            stream=report.stream,
            t_start=t_first,
            t_end=report.t_last_end if report.t_last_end is not None else t_first,
            model=s.model_name,
            labels=s.labels,
            labels_sha256=s.labels_sha256,
            window=s.window_s,
            hop=s.hop_s,
            source=report.source,
            counters=counters,
            latency=latency_percentiles(self.latencies.get(report.stream, ())),
            groups=self.group_thresholds(),
            events_window=events_window,
            events_hop=events_hop,
            inference=self.inference() if self.inference is not None else {},
            backend=s.backend,
            ended=report.ended,
            error=report.error or "",
        )

    def group_thresholds(self) -> dict[str, float]:
        """Every group's threshold_on: the event groups', then the heads' labels."""
        s = self.settings
        groups = dict(zip(s.groups.names, s.groups.thresholds, strict=True)) if s.groups else {}
        if self.heads is not None:
            groups.update(self.heads.group_thresholds())
        return groups


def latency_percentiles(values: Sequence[float] | deque[float]) -> dict[str, float]:
    """p50, p99 and max (seconds) and the count of recent latencies."""
    if not values:
        return {}
    data = np.fromiter(values, dtype=np.float64)
    return {
        "p50": float(np.percentile(data, 50)),
        "p99": float(np.percentile(data, 99)),
        "max": float(data.max()),
        "n": float(len(data)),
    }

"""Turn window results into published ``tags`` and periodic ``status`` messages.

Runs on the pipeline's inference thread. It measures capture-to-publish latency (from the
last audio of a window entering its source to the window's message leaving the socket)
and reports percentiles, counters and the model's labels in ``status`` every few seconds.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from soundwatch.pipeline import TAGS, StreamState, WindowResult
from soundwatch.sinks.messages import Status, Tags
from soundwatch.sinks.publisher import Publisher

LATENCY_HISTORY = 2048  # windows kept per stream for latency percentiles


def top_labels(probs: np.ndarray, labels: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` most probable labels with their probabilities, best first."""
    order = np.argsort(probs)[::-1][:k]
    return [(labels[i], float(probs[i])) for i in order]


def labels_digest(labels: Sequence[str]) -> str:
    """sha256 of the labels joined by newlines: lets a subscriber check its label list."""
    return hashlib.sha256("\n".join(labels).encode()).hexdigest()


class LivePublisher:
    """A pipeline result handler that publishes ``tags`` and ``status`` messages."""

    def __init__(
        self,
        publisher: Publisher,
        streams: Sequence[StreamState],
        *,
        model_name: str,
        labels: Sequence[str],
        window_s: float,
        hop_s: float,
        top_k: int = 5,
        status_interval: float = 5.0,
        extra_counters: Callable[[str], dict[str, int]] | None = None,
    ) -> None:
        self.publisher = publisher
        self.streams = {state.id: state for state in streams}
        self.model_name = model_name
        self.labels = list(labels)
        self.labels_sha256 = labels_digest(self.labels)
        self.window_s = window_s
        self.hop_s = hop_s
        self.top_k = top_k
        self.status_interval = status_interval
        self.extra_counters = extra_counters  # e.g. the event detectors' counters
        self.latencies = {stream: deque(maxlen=LATENCY_HISTORY) for stream in self.streams}
        self._next_status = time.monotonic()  # first status at once: subscribers learn labels

    def on_result(self, result: WindowResult) -> None:
        if TAGS not in result.purposes:
            return
        self.publisher.publish(
            Tags(
                stream=result.stream,
                t_start=result.t_start,
                t_end=result.t_end,
                probs=result.probs.astype(np.float32, copy=False),
                top=top_labels(result.probs, self.labels, self.top_k),
            )
        )
        self.latencies[result.stream].append(time.monotonic() - result.t_ingest)

    def on_tick(self) -> None:
        if time.monotonic() >= self._next_status:
            self.publish_status()

    def on_stream_end(self, stream: str) -> None:
        self.publish_status(only=stream)

    def publish_status(self, only: str | None = None) -> None:
        """Publish one status message per stream (or for ``only``)."""
        self._next_status = time.monotonic() + self.status_interval
        for stream, state in self.streams.items():
            if only is not None and stream != only:
                continue
            self.publisher.publish(self.status_of(state))

    def status_of(self, state: StreamState) -> Status:
        source_stats = state.source.stats()
        counters = {
            **{name: int(value) for name, value in vars(source_stats).items()},
            **{name: int(value) for name, value in vars(state.counters).items()},
            "nonfinite_samples": state.nonfinite_samples,
            **(self.extra_counters(state.id) if self.extra_counters else {}),
        }
        t_first = state.first_t if state.first_t is not None else time.time()
        return Status(
            stream=state.id,
            t_start=t_first,
            t_end=state.last_t_end if state.last_t_end is not None else t_first,
            model=self.model_name,
            labels=self.labels,
            labels_sha256=self.labels_sha256,
            window=self.window_s,
            hop=self.hop_s,
            source=state.source.describe(),
            counters=counters,
            latency=latency_percentiles(self.latencies[state.id]),
        )


def latency_percentiles(values: deque[float]) -> dict[str, float]:
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

"""What inference hands on: one window's result, and the handlers that receive it.

Small and numpy-only, so the sinks and the event detector depend on it rather than on the
pipeline that produces it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

TAGS = "tags"  # the window series published as tags
EVENTS = "events"  # the window series the event detector reads (may be the same windows)


@dataclass(frozen=True)
class WindowResult:
    """The tagger's output for one window of one stream."""

    stream: str
    start_frame: int  # frames since the stream (segment) started
    stop_frame: int
    t_start: float  # Unix seconds, capture clock
    t_end: float
    offset_s: float  # seconds from the stream's first sample to t_start
    probs: np.ndarray  # [num_classes] float32
    embedding: np.ndarray
    t_ingest: float  # time.monotonic() when the window's last audio entered the source
    final: bool  # the stream (or a segment of it) ended with this window
    purposes: frozenset[str] = frozenset({TAGS})  # which window series it belongs to
    carried: bool = False  # no forward pass: the stream's last tagged result, carried forward


@dataclass(frozen=True)
class StreamReport:
    """A snapshot of one stream for status messages: what it reads and what it counted."""

    stream: str
    source: dict[str, Any]  # Source.describe(): kind, device or path, rates
    counters: dict[str, int]  # the source's and the pipeline's cumulative counters
    t_first: float | None  # Unix time of the stream's first sample (None before any)
    t_last_end: float | None  # end of the last tagged window
    ended: bool  # every window of the stream has been delivered
    error: str | None  # why the stream stopped early, if it did


class ResultHandler(Protocol):
    """Receives results on the inference thread; may publish."""

    def on_result(self, result: WindowResult) -> None: ...

    def on_stream_end(self, stream: str) -> None:
        """Every window of ``stream`` has been delivered; nothing more will come."""

    def on_tick(self) -> None: ...

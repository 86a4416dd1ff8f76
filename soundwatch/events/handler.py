"""A pipeline result handler that runs one event detector per stream and publishes events."""

from __future__ import annotations

from collections.abc import Callable

from soundwatch.events.detector import DetectorSettings, EventDetector
from soundwatch.results import EVENTS, WindowResult
from soundwatch.sinks.messages import Event


class EventsHandler:
    """Feeds each stream's window results to its own :class:`EventDetector` and passes
    every event message to ``publish`` (called on the inference thread)."""

    def __init__(self, settings: DetectorSettings, publish: Callable[[Event], None]) -> None:
        self.settings = settings
        self.publish = publish
        self.detectors: dict[str, EventDetector] = {}

    def detector(self, stream: str) -> EventDetector:
        if stream not in self.detectors:
            self.detectors[stream] = EventDetector(self.settings, stream)
        return self.detectors[stream]

    def on_result(self, result: WindowResult) -> None:
        if EVENTS not in result.purposes:
            return
        for message in self.detector(result.stream).push(result):
            self.publish(message)

    def counters(self, stream: str) -> dict[str, int]:
        """The stream's detector counters, prefixed ``events_``, for status messages."""
        detector = self.detectors.get(stream)
        if detector is None:
            return {}
        return {f"events_{name}": int(value) for name, value in vars(detector.counters).items()}

    def on_stream_end(self, stream: str) -> None:
        if stream in self.detectors:
            for message in self.detectors[stream].finish():
                self.publish(message)

    def on_tick(self) -> None:
        pass

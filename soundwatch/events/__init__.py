"""Sound events: window scores -> events that start and end when the sounds do.

``EventsConfig`` is the ``events`` config section; ``build_settings`` resolves it against a
model's classes; ``EventDetector`` runs per stream on window results and emits
``Event`` messages; ``EventsHandler`` plugs detectors into the pipeline;
``detect_events_offline`` gives the same events for a whole recording (scoring against
ground truth lives with the benchmarks, ``benchmarks/scoring.py``). The method is described
in docs/events.md.
"""

from soundwatch.events.config import EventsConfig, GroupConfig, parse_events_config
from soundwatch.events.detector import (
    DetectedEvent,
    DetectorSettings,
    EventDetector,
    build_settings,
    detect_events_offline,
    detected_from_messages,
)
from soundwatch.events.groups import Group, resolve_groups
from soundwatch.events.handler import EventsHandler

__all__ = [
    "DetectedEvent",
    "DetectorSettings",
    "EventDetector",
    "EventsConfig",
    "EventsHandler",
    "Group",
    "GroupConfig",
    "build_settings",
    "detect_events_offline",
    "detected_from_messages",
    "parse_events_config",
    "resolve_groups",
]

"""A pipeline result handler that runs one event detector per stream and publishes events.

It also holds the groups' runtime settings: :meth:`EventsHandler.update` validates a
change to a group's thresholds, minimum duration, gap or enabled flag like the config
does, and the inference thread applies it before the next window (a rejected change
leaves everything as it was). A disabled group's thresholds are infinite: it starts no
event, and an open one ends as its sound would.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from pydantic import ValidationError

from soundwatch.errors import SoundwatchError
from soundwatch.events.config import GroupConfig
from soundwatch.events.detector import DetectorSettings, EventDetector
from soundwatch.events.hysteresis import Thresholds
from soundwatch.results import EVENTS, WindowResult
from soundwatch.sinks.messages import Event
from soundwatch.validation import check_off_not_above_on

#: What a runtime change may set, per group.
GROUP_KEYS = ("threshold_on", "threshold_off", "min_duration", "max_gap", "enabled")


class EventsHandler:
    """Feeds each stream's window results to its own :class:`EventDetector` and passes
    every event message to ``publish`` (called on the inference thread)."""

    def __init__(self, settings: DetectorSettings, publish: Callable[[Event], None]) -> None:
        self.settings = settings  # the groups' values, disabled groups included
        self.publish = publish
        self.detectors: dict[str, EventDetector] = {}
        self.enabled = np.ones(len(settings.groups), dtype=bool)
        self._lock = threading.Lock()  # update() may come from any thread
        self._pending: Thresholds | None = None  # applied before the next window

    def detector(self, stream: str) -> EventDetector:
        if stream not in self.detectors:
            effective = replace(self.settings, thresholds=self._effective())
            self.detectors[stream] = EventDetector(effective, stream)
        return self.detectors[stream]

    def on_result(self, result: WindowResult) -> None:
        if EVENTS not in result.purposes:
            return
        self._apply_pending()
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

    # --- runtime settings ----------------------------------------------------------
    def group_index(self, name: str) -> int:
        try:
            return self.settings.labels.index(name)
        except ValueError:
            raise SoundwatchError(
                f"no event group {name!r}; the groups are: {', '.join(self.settings.labels)}"
            ) from None

    def group_settings(self, name: str) -> dict[str, Any]:
        """A group's current settings (seconds, not steps)."""
        with self._lock:
            return self._group_settings(self.group_index(name))

    def _group_settings(self, i: int) -> dict[str, Any]:
        t, step = self.settings.thresholds, self.settings.step_s
        return {
            "threshold_on": round(float(t.on[i]), 6),
            "threshold_off": round(float(t.off[i]), 6),
            "min_duration": round(float(t.min_steps[i]) * step, 6),
            "max_gap": round(float(t.max_gap_steps[i]) * step, 6),
            "enabled": bool(self.enabled[i]),
        }

    def update(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Validate and queue a change of one group (applied before the next window);
        return the group's new settings. Raises :class:`SoundwatchError` naming the
        problem, changing nothing, when the change is not valid.

        ``threshold_on`` alone keeps the group's off/on ratio; ``min_duration`` and
        ``max_gap`` are rounded to whole ``events.step`` steps, as in the config.
        """
        unknown = sorted(set(changes) - set(GROUP_KEYS))
        if unknown:
            raise SoundwatchError(
                f"cannot set {', '.join(unknown)} of group {name!r}; settable: "
                f"{', '.join(GROUP_KEYS)}"
            )
        with self._lock:
            i = self.group_index(name)
            current = self._group_settings(i)
            values = {**current, **changes}
            if "threshold_on" in changes and "threshold_off" not in changes:
                ratio = current["threshold_off"] / current["threshold_on"]
                values["threshold_off"] = float(values["threshold_on"]) * ratio
            numbers = {k: v for k, v in values.items() if k != "enabled"}
            try:
                checked = GroupConfig.model_validate({"labels": [name], **numbers})
                check_off_not_above_on(checked.threshold_off, checked.threshold_on)
            except ValidationError as error:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or 'thresholds'}: "
                    f"{e['msg'].removeprefix('Value error, ')}"
                    for e in error.errors()
                )
                raise SoundwatchError(f"rejected change to group {name}: {problems}") from None
            except ValueError as error:
                raise SoundwatchError(f"rejected change to group {name}: {error}") from None
            flag = values["enabled"]
            if not isinstance(flag, bool):
                raise SoundwatchError(
                    f"enabled of group {name!r} must be true or false, got {flag!r}"
                )
            step = self.settings.step_s
            t = self.settings.thresholds
            new = replace(
                t,
                on=_with(t.on, i, checked.threshold_on),
                off=_with(t.off, i, checked.threshold_off),
                min_steps=_with(t.min_steps, i, math.ceil(checked.min_duration / step - 1e-9)),
                max_gap_steps=_with(t.max_gap_steps, i, math.floor(checked.max_gap / step + 1e-9)),
            )
            self.settings = replace(self.settings, thresholds=new)
            self.enabled[i] = flag
            self._pending = self._effective()
            return self._group_settings(i)

    def replace_settings(self, settings: DetectorSettings) -> None:
        """Take every group's settings from ``settings`` (a reloaded config), all groups
        enabled, from the next window on. The groups and windows must be the same (those
        need a restart); otherwise nothing changes."""
        old = self.settings
        if settings.labels != old.labels:
            added = sorted(set(settings.labels) - set(old.labels))
            removed = sorted(set(old.labels) - set(settings.labels))
            raise SoundwatchError(
                f"the reloaded config changes the event groups (added: {added or 'none'}, "
                f"removed: {removed or 'none'}); restart soundwatch for that"
            )
        same = (old.window_frames, old.hop_frames, old.step_frames)
        if (settings.window_frames, settings.hop_frames, settings.step_frames) != same or (
            settings.quantile,
            settings.trim_s,
            settings.smoothing,
            settings.smoothing_width_s,
        ) != (old.quantile, old.trim_s, old.smoothing, old.smoothing_width_s):
            raise SoundwatchError(
                "the reloaded config changes events.window, hop, step, agreement, trim or "
                "smoothing; restart soundwatch for that (thresholds, min_duration and "
                "max_gap change live)"
            )
        with self._lock:
            self.settings = replace(old, thresholds=settings.thresholds)
            self.enabled[:] = True
            self._pending = self._effective()

    def _effective(self) -> Thresholds:
        """The thresholds the detectors use: infinite for disabled groups."""
        t = self.settings.thresholds
        off = ~self.enabled
        return replace(
            t,
            on=np.where(off, np.float32(np.inf), t.on).astype(np.float32),
            off=np.where(off, np.float32(np.inf), t.off).astype(np.float32),
            min_steps=t.min_steps.copy(),
            max_gap_steps=t.max_gap_steps.copy(),
        )

    def _apply_pending(self) -> None:
        if self._pending is None:
            return
        with self._lock:
            thresholds, self._pending = self._pending, None
        if thresholds is None:
            return
        for detector in self.detectors.values():
            detector.set_thresholds(thresholds)


def _with(values: np.ndarray, i: int, value: float | int | None) -> np.ndarray:
    out = values.copy()
    out[i] = value
    return out

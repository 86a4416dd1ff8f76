"""What runtime control can do, whoever asks (control socket, MQTT, dashboard).

:class:`Controls` lists streams and event groups, gets and sets a group's settings
(validated like the config by :meth:`EventsHandler.update`; a rejected change leaves
everything as it was and says why), pauses and resumes streams, and reloads the config
file, and cuts the last seconds of a stream's audio for ``soundwatch record``. Every
applied change is passed to ``on_change`` (the runner writes it to the history
and publishes status at once) and, with ``overlay``, kept in the overlay file.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml

from soundwatch.errors import SoundwatchError
from soundwatch.events.detector import DetectorSettings
from soundwatch.events.handler import EventsHandler
from soundwatch.stream.resample import TARGET_RATE

if TYPE_CHECKING:
    from soundwatch.recorder.ring import Cut

log = logging.getLogger(__name__)

OVERLAY_HEADER = (
    "# Runtime changes kept by soundwatch (control.persist); applied over the config at\n"
    "# start. Delete this file to go back to the config alone.\n"
)


class RecentAudio(Protocol):
    """The last seconds of each stream (``soundwatch.recorder.examples.LiveAudio``)."""

    seconds: float

    def last(self, stream: str, seconds: float) -> Cut: ...


class Pausable(Protocol):
    """A stream the controls can pause (the pipeline's stream state)."""

    id: str
    paused: bool


def overlay_path(config_path: Path | None, configured: Path | None) -> Path:
    """``control.overlay``, else ``CONFIG.overlay.yaml`` beside the config file."""
    if configured is not None:
        return configured
    if config_path is None:
        raise SoundwatchError(
            "control.persist needs a place for its overlay file: run with --config FILE "
            "(it goes beside it) or set control.overlay"
        )
    return config_path.with_name(config_path.stem + ".overlay.yaml")


class Controls:
    """The runtime controls of one run (thread-safe; see the module docstring)."""

    def __init__(
        self,
        events: EventsHandler | None,
        streams: Sequence[Pausable],
        reload: Callable[[], DetectorSettings] | None = None,
        overlay: Path | None = None,
        on_change: Callable[[str, str, dict[str, Any]], None] | None = None,
        audio: RecentAudio | None = None,
    ) -> None:
        self.events = events
        self.audio = audio
        self.streams = {s.id: s for s in streams}
        self._reload = reload
        self.overlay = overlay
        self.on_change = on_change
        self.changes = 0
        self._lock = threading.Lock()
        self._changed_groups: dict[str, dict[str, Any]] = {}  # what the overlay keeps

    # --- dispatch ------------------------------------------------------------------
    def handle(self, request: dict[str, Any], origin: str) -> dict[str, Any]:
        """One request ``{"cmd": ..., ...}`` -> ``{"ok": true, "result": ...}`` or
        ``{"ok": false, "error": ...}``."""
        cmd = request.get("cmd")
        commands: dict[str, Callable[[dict[str, Any], str], Any]] = {
            "streams": lambda r, o: self.list_streams(),
            "groups": lambda r, o: self.list_groups(),
            "get": lambda r, o: self.get(_arg(r, "group")),
            "set": lambda r, o: self.set(_arg(r, "group"), _arg(r, "values", dict), o),
            "pause": lambda r, o: self.pause(_arg(r, "stream"), o),
            "resume": lambda r, o: self.resume(_arg(r, "stream"), o),
            "reload": lambda r, o: self.reload(o),
            "record": lambda r, o: self.record(_arg(r, "stream"), _seconds(r), o),
        }
        if cmd not in commands:
            return {
                "ok": False,
                "error": f"unknown command {cmd!r}; commands: {', '.join(commands)}",
            }
        try:
            return {"ok": True, "result": commands[cmd](request, origin)}
        except SoundwatchError as error:
            log.info("control (%s): %s rejected: %s", origin, cmd, error)
            return {"ok": False, "error": str(error)}

    # --- reading -------------------------------------------------------------------
    def list_streams(self) -> list[dict[str, Any]]:
        return [{"id": s.id, "paused": bool(s.paused)} for s in self.streams.values()]

    def list_groups(self) -> dict[str, dict[str, Any]]:
        events = self._events()
        return {name: events.group_settings(name) for name in events.settings.labels}

    def get(self, group: str) -> dict[str, Any]:
        return self._events().group_settings(group)

    def counters(self, stream: str) -> dict[str, int]:
        """What ``status`` counts of the controls for ``stream``: paused (0/1), changes
        applied so far, event groups disabled."""
        s = self.streams.get(stream)
        disabled = int((~self.events.enabled).sum()) if self.events is not None else 0
        return {
            "paused": int(bool(s is not None and s.paused)),
            "control_changes": self.changes,
            "events_groups_disabled": disabled,
        }

    def record(self, stream: str, seconds: float, origin: str) -> dict[str, Any]:
        """The last ``seconds`` of ``stream``'s audio: 32 kHz mono float32 little-endian,
        base64, with the time of its first sample (Unix s, capture clock)."""
        if stream not in self.streams:
            raise SoundwatchError(
                f"no stream {stream!r}; the streams are: {', '.join(self.streams)}"
            )
        if self.audio is None:
            raise SoundwatchError(
                "this control endpoint keeps no audio ring, so it cannot record (a "
                "soundwatch run with --control keeps one)"
            )
        cut = self.audio.last(stream, seconds)
        log.info("control (%s): recorded the last %g s of %s", origin, seconds, stream)
        return {
            "stream": stream,
            "rate": TARGET_RATE,
            "t_start": cut.t_start,
            "t_end": cut.t_end,
            "samples": base64.b64encode(cut.samples.astype("<f4").tobytes()).decode("ascii"),
        }

    # --- changing ------------------------------------------------------------------
    def set(self, group: str, values: dict[str, Any], origin: str) -> dict[str, Any]:
        if not values:
            raise SoundwatchError(f"nothing to set for group {group!r}; give KEY=VALUE pairs")
        with self._lock:
            result = self._events().update(group, values)
            self._changed_groups[group] = result
            self._changed(origin, "set", {"group": group, "values": values, "now": result})
        return result

    def pause(self, stream: str, origin: str) -> dict[str, Any]:
        return self._set_paused(stream, True, origin)

    def resume(self, stream: str, origin: str) -> dict[str, Any]:
        return self._set_paused(stream, False, origin)

    def _set_paused(self, stream: str, paused: bool, origin: str) -> dict[str, Any]:
        target = self.streams.get(stream)
        if target is None:
            raise SoundwatchError(
                f"no stream {stream!r}; the streams are: {', '.join(self.streams)}"
            )
        with self._lock:
            target.paused = paused
            self._changed(origin, "pause" if paused else "resume", {"stream": stream})
        return {"id": stream, "paused": paused}

    def reload(self, origin: str) -> dict[str, Any]:
        """Re-read the config file and apply its event group settings (what can change
        while running); with ``persist``, the overlay is applied over it again. Groups are
        enabled again."""
        if self._reload is None:
            raise SoundwatchError("nothing to reload: soundwatch was started without --config")
        settings = self._reload()  # raises, naming the problem, when the file is not valid
        with self._lock:
            events = self._events()
            events.replace_settings(settings)
            if self.overlay is None:  # not persisted: the file's values, and only those
                self._changed_groups.clear()
            for group, values in self._changed_groups.items():
                events.update(group, values)
            self._changed(origin, "reload", {"overlay_groups": sorted(self._changed_groups)})
        return {"groups": self.list_groups(), "note": "sources, model and windows need a restart"}

    def apply_overlay(self) -> int:
        """At start: apply the overlay file's changes (validated; a bad file is an error
        naming it). Returns how many groups and streams it changed."""
        if self.overlay is None or not self.overlay.exists():
            return 0
        try:
            data = yaml.safe_load(self.overlay.read_text("utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            raise SoundwatchError(f"cannot read the overlay file {self.overlay}: {error}") from None
        if not isinstance(data, dict) or set(data) - {"groups", "paused"}:
            raise SoundwatchError(
                f"the overlay file {self.overlay} must hold only groups: and paused:; delete it "
                "to start from the config alone"
            )
        count = 0
        for group, values in (data.get("groups") or {}).items():
            try:
                self._changed_groups[group] = self._events().update(group, dict(values))
            except (SoundwatchError, TypeError, ValueError) as error:
                raise SoundwatchError(
                    f"the overlay file {self.overlay}: group {group}: {error}; fix or delete it"
                ) from None
            count += 1
        for stream in data.get("paused") or []:
            if stream in self.streams:
                self.streams[stream].paused = True
                count += 1
        return count

    # --- helpers -------------------------------------------------------------------
    def _events(self) -> EventsHandler:
        if self.events is None:
            raise SoundwatchError("events are disabled (events.enabled: false): no groups")
        return self.events

    def _changed(self, origin: str, command: str, detail: dict[str, Any]) -> None:
        self.changes += 1
        log.info("control (%s): %s %s", origin, command, detail)
        if self.overlay is not None:
            self._write_overlay()
        if self.on_change is not None:
            self.on_change(origin, command, detail)

    def _write_overlay(self) -> None:
        assert self.overlay is not None
        data = {
            "groups": self._changed_groups,
            "paused": sorted(s.id for s in self.streams.values() if s.paused),
        }
        partial = self.overlay.with_name(self.overlay.name + ".part")
        partial.write_text(OVERLAY_HEADER + yaml.safe_dump(data, sort_keys=True), "utf-8")
        os.replace(partial, self.overlay)


def _arg(request: dict[str, Any], name: str, kind: type = str) -> Any:
    value = request.get(name)
    if not isinstance(value, kind):
        raise SoundwatchError(f"{request.get('cmd')} needs {name} ({kind.__name__})")
    return value


def _seconds(request: dict[str, Any]) -> float:
    value = request.get("seconds")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SoundwatchError("record needs seconds (a number)")
    return float(value)

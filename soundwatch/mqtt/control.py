"""MQTT command topics for runtime control: enable or disable an event group, set its
threshold, with Home Assistant ``switch`` and ``number`` discovery.

Controls are per **group**, not per stream: a group's settings are shared by every stream
of a run (docs/control.md), so one switch and one number per group sit on a node-level
device ``soundwatch <node>``. Commands are not applied here: each one is sent to the run's
control endpoint over ZeroMQ (:func:`soundwatch.control.client.request`), which validates
it like ``soundwatch ctl`` and applies it at the next window. Topics::

    <prefix>/<node>/control/<group>/enabled        ON | OFF (retained)
    <prefix>/<node>/control/<group>/enabled/set    command: ON | OFF
    <prefix>/<node>/control/<group>/threshold      threshold_on (retained)
    <prefix>/<node>/control/<group>/threshold/set  command: a number in 0..1
    <prefix>/<node>/control/result                 every command's outcome as JSON

One thread of its own does the asking (a slow or absent endpoint never stalls the event
bridge); it also re-reads the groups every ``poll`` seconds, so changes made elsewhere
(``soundwatch ctl``, the dashboard) show in Home Assistant too.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from typing import Any

import paho.mqtt.client as mqtt
import yaml

from soundwatch.control.client import ControlRejected, request
from soundwatch.errors import SoundwatchError
from soundwatch.mqtt.config import topic_safe
from soundwatch.mqtt.discovery import OFF, OFFLINE, ON, ONLINE, ORIGIN, Topics, display_name
from soundwatch.security.curve import CurveClient

log = logging.getLogger("soundwatch.mqtt")

#: The two settings offered over MQTT: topic key -> control key.
KEYS = {"enabled": "enabled", "threshold": "threshold_on"}
ORIGIN_NAME = "mqtt"


class ControlTopics:
    """Topic names of the command layout above."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.base = f"{topics.base}/control"

    def state(self, group: str, key: str) -> str:
        return f"{self.base}/{topic_safe(group)}/{key}"

    def command(self, group: str, key: str) -> str:
        return f"{self.state(group, key)}/set"

    @property
    def all_commands(self) -> str:
        return f"{self.base}/+/+/set"

    @property
    def result(self) -> str:
        return f"{self.base}/result"

    def parse(self, topic: str) -> tuple[str, str] | None:
        """``(safe group, key)`` of a command topic, or None."""
        if not topic.startswith(self.base + "/") or not topic.endswith("/set"):
            return None
        parts = topic[len(self.base) + 1 : -len("/set")].split("/")
        if len(parts) != 2 or parts[1] not in KEYS:
            return None
        return parts[0], parts[1]


def control_device(node: str) -> dict[str, Any]:
    """The node-level Home Assistant device holding the per-group controls."""
    return {
        "identifiers": [f"soundwatch_{node}"],
        "name": f"soundwatch {node}",
        "manufacturer": "soundwatch",
        "sw_version": ORIGIN["sw_version"],
    }


def control_discovery(
    topics: Topics, discovery_prefix: str, group: str
) -> list[tuple[str, dict[str, Any]]]:
    """The ``switch`` (enabled) and ``number`` (threshold_on) discovery of one group."""
    node, names = topics.node, ControlTopics(topics)
    safe = topic_safe(group)
    common = {
        "availability": [
            {
                "topic": topics.availability,
                "payload_available": ONLINE,
                "payload_not_available": OFFLINE,
            }
        ],
        "device": control_device(node),
        "origin": ORIGIN,
        "qos": 1,
        "entity_category": "config",
    }
    switch = {
        "name": f"{display_name(group)} detection",
        "unique_id": f"soundwatch_{node}_control_{safe}_enabled",
        "command_topic": names.command(group, "enabled"),
        "state_topic": names.state(group, "enabled"),
        "payload_on": ON,
        "payload_off": OFF,
        "icon": "mdi:ear-hearing",
        **common,
    }
    number = {
        "name": f"{display_name(group)} threshold",
        "unique_id": f"soundwatch_{node}_control_{safe}_threshold",
        "command_topic": names.command(group, "threshold"),
        "state_topic": names.state(group, "threshold"),
        "min": 0.0,
        "max": 1.0,
        "step": 0.01,
        "mode": "box",
        "icon": "mdi:tune-vertical",
        **common,
    }
    return [
        (f"{discovery_prefix}/switch/{node}/control_{safe}/config", switch),
        (f"{discovery_prefix}/number/{node}/control_{safe}_threshold/config", number),
    ]


def command_value(key: str, payload: str) -> Any:
    """The value a command payload asks for; the endpoint judges it (so ``maybe`` for
    ``enabled`` is refused there, with the same reason ``soundwatch ctl`` would get)."""
    text = payload.strip()
    if key == "enabled" and text.upper() in (ON, OFF):
        return text.upper() == ON
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


class ControlLink:
    """Carries MQTT commands to a control endpoint and the groups' settings back."""

    def __init__(
        self,
        client: mqtt.Client,
        topics: Topics,
        discovery_prefix: str,
        endpoint: str | None = None,
        poll: float = 5.0,
        timeout: float = 5.0,
        curve: CurveClient | None = None,
    ) -> None:
        self.client = client
        self.curve = curve  # keys for a CURVE control endpoint
        self.topics = topics
        self.names = ControlTopics(topics)
        self.discovery_prefix = discovery_prefix
        self.endpoint = endpoint
        self.poll = poll
        self.timeout = timeout
        self.commands = 0  # commands received
        self.rejected = 0  # commands the endpoint (or the bridge) refused
        self.failed = 0  # commands that got no answer
        self._queue: queue.SimpleQueue[tuple[str, str] | None] = queue.SimpleQueue()
        self._resync = threading.Event()
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._groups: dict[str, dict[str, Any]] = {}  # last settings read
        self._published: dict[str, str] = {}  # state topic -> payload sent on this connection
        self._unreachable = False
        self._thread = threading.Thread(target=self._run, name="mqtt-control", daemon=True)

    # -- called from other threads ---------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def set_endpoint(self, endpoint: str, curve: CurveClient | None = None) -> None:
        """The control endpoint (known after the run bound it, when run in-process), and
        the keys it takes when it uses CURVE."""
        self.endpoint = endpoint
        self.curve = curve
        self._resync.set()
        self._queue.put(None)

    def connected(self, client: mqtt.Client) -> None:
        """paho connected: subscribe to the commands and send discovery and states again."""
        client.subscribe(self.names.all_commands, qos=1)
        self._connected.set()
        self._resync.set()
        self._queue.put(None)

    def disconnected(self) -> None:
        self._connected.clear()

    def offer(self, topic: str, payload: str, retain: bool) -> bool:
        """Take a message if it is a command (paho's thread); True when it was one."""
        if self.names.parse(topic) is None:
            return False
        if retain:  # a retained command is someone's old wish, not a command now
            log.warning("ignored a retained control command on %s", topic)
        else:
            self._queue.put((topic, payload))
        return True

    def close(self) -> None:
        self._stop.set()
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(self.timeout + 1.0)

    # -- its own thread --------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=self.poll)
            except queue.Empty:
                item = None
            if self._stop.is_set():
                break
            if self.endpoint is None or not self._connected.is_set():
                continue
            try:
                if item is not None:
                    self._command(*item)
                self._refresh()
            except Exception:  # never let one bad answer end the control link
                log.exception("mqtt control: unexpected error")

    def _ask(self, cmd: str, **args: Any) -> Any:
        assert self.endpoint is not None
        return request(
            self.endpoint, cmd, timeout=self.timeout, curve=self.curve, origin=ORIGIN_NAME, **args
        )

    def _refresh(self) -> None:
        """Read the groups; announce new ones, publish changed states."""
        try:
            groups = self._ask("groups")
        except ControlRejected as error:
            log.warning("mqtt control: the endpoint refused to list groups: %s", error)
            return
        except SoundwatchError as error:
            if not self._unreachable:
                log.warning("mqtt control: %s", error)
            self._unreachable = True
            return
        if self._unreachable:
            log.info("mqtt control: reached the control endpoint %s", self.endpoint)
        self._unreachable = False
        resync = self._resync.is_set()
        self._resync.clear()
        if resync:
            self._published.clear()
        for group, settings in groups.items():
            if group not in self._groups or resync:
                for topic, payload in control_discovery(self.topics, self.discovery_prefix, group):
                    self._publish(topic, json.dumps(payload), retain=True)
            self._publish_state(group, settings)
        self._groups = groups

    def _publish_state(self, group: str, settings: dict[str, Any]) -> None:
        states = {
            "enabled": ON if settings["enabled"] else OFF,
            "threshold": f"{float(settings['threshold_on']):g}",
        }
        for key, payload in states.items():
            topic = self.names.state(group, key)
            if self._published.get(topic) != payload:
                self._publish(topic, payload, retain=True)
                self._published[topic] = payload

    def _command(self, topic: str, payload: str) -> None:
        self.commands += 1
        safe, key = self.names.parse(topic)  # type: ignore[misc]
        if not self._groups:
            self._refresh()
        group = next((g for g in self._groups if topic_safe(g) == safe), None)
        value = command_value(key, payload)
        outcome: dict[str, Any] = {"group": group or safe, "key": key, "payload": payload}
        if group is None:
            error = f"no event group {safe!r}; the groups are: {', '.join(self._groups)}"
            self._refused(outcome, error)
            return
        try:
            result = self._ask("set", group=group, values={KEYS[key]: value})
        except ControlRejected as error:
            self._refused(outcome, str(error))
            self._republish(group)
            return
        except SoundwatchError as error:
            self.failed += 1
            log.warning("mqtt control: %s %s=%r not applied: %s", group, key, payload, error)
            self._publish(
                self.names.result, json.dumps({"ok": False, **outcome, "error": str(error)})
            )
            return
        log.info("mqtt control: %s %s set to %r", group, key, value)
        self._groups[group] = result
        self._publish(self.names.result, json.dumps({"ok": True, **outcome, "now": result}))
        self._publish_state(group, result)

    def _refused(self, outcome: dict[str, Any], error: str) -> None:
        self.rejected += 1
        log.warning(
            "mqtt control: rejected %s=%r for %s: %s",
            outcome["key"],
            outcome["payload"],
            outcome["group"],
            error,
        )
        self._publish(self.names.result, json.dumps({"ok": False, **outcome, "error": error}))

    def _republish(self, group: str) -> None:
        """After a refusal: the current state again, so a Home Assistant entity that
        showed the refused value goes back to the one in force."""
        settings = self._groups.get(group)
        if settings is not None:
            for key in KEYS:
                self._published.pop(self.names.state(group, key), None)
            self._publish_state(group, settings)

    def _publish(self, topic: str, payload: str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain)

"""Topic names and Home Assistant MQTT discovery payloads, as pure functions.

Layout (``<prefix>`` = ``soundwatch``, ``<node>`` = the machine, ``<stream>`` a soundwatch
stream, ``<group>`` an event group; both made topic-safe)::

    <prefix>/<node>/availability             online | offline (retained, last will)
    <prefix>/<node>/<stream>/<group>/state   ON | OFF (retained)
    <prefix>/<node>/<stream>/<group>/attributes  the group's last event as JSON (retained)
    <prefix>/<node>/<stream>/events          every event message as JSON
    <prefix>/<node>/<stream>/scores          {"t_end": ..., "groups": {group: score}}, <= 1/s

Discovery follows Home Assistant's single-component layout,
``<discovery_prefix>/<component>/<node>/<object_id>/config``: per stream one device, per
group a ``binary_sensor`` (``device_class: sound``) and a disabled-by-default score
``sensor``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from soundwatch import __version__
from soundwatch.mqtt.config import topic_safe

ONLINE = "online"
OFFLINE = "offline"
ON = "ON"
OFF = "OFF"
ORIGIN = {"name": "soundwatch", "sw_version": __version__}


@dataclass(frozen=True)
class Topics:
    """The state topics of one node (one soundwatch bridge)."""

    prefix: str
    node: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.node}"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    def state(self, stream: str, group: str) -> str:
        return f"{self.base}/{topic_safe(stream)}/{topic_safe(group)}/state"

    def attributes(self, stream: str, group: str) -> str:
        return f"{self.base}/{topic_safe(stream)}/{topic_safe(group)}/attributes"

    def events(self, stream: str) -> str:
        return f"{self.base}/{topic_safe(stream)}/events"

    def scores(self, stream: str) -> str:
        return f"{self.base}/{topic_safe(stream)}/scores"

    @property
    def all_states(self) -> str:
        """A subscription matching every state topic of this node."""
        return f"{self.base}/+/+/state"


def display_name(group: str) -> str:
    """``glass_breaking`` -> ``Glass breaking``."""
    text = group.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def object_id(stream: str, group: str) -> str:
    return f"{topic_safe(stream)}_{topic_safe(group)}"


def device_id(node: str, stream: str) -> str:
    return f"soundwatch_{node}_{topic_safe(stream)}"


def device(node: str, stream: str, model: str = "") -> dict[str, Any]:
    """One Home Assistant device per stream (a microphone, a file, ...)."""
    info: dict[str, Any] = {
        "identifiers": [device_id(node, stream)],
        "name": f"soundwatch {node} {stream}",
        "manufacturer": "soundwatch",
        "sw_version": __version__,
    }
    if model:
        info["model"] = model
    return info


def _common(topics: Topics, node: str, stream: str, model: str) -> dict[str, Any]:
    return {
        "availability": [
            {
                "topic": topics.availability,
                "payload_available": ONLINE,
                "payload_not_available": OFFLINE,
            }
        ],
        "device": device(node, stream, model),
        "origin": ORIGIN,
        "qos": 1,
    }


def binary_sensor(
    topics: Topics, discovery_prefix: str, stream: str, group: str, model: str = ""
) -> tuple[str, dict[str, Any]]:
    """The discovery topic and payload of a group's ON/OFF sensor."""
    node = topics.node
    payload = {
        "name": display_name(group),
        "unique_id": f"{device_id(node, stream)}_{topic_safe(group)}",
        "device_class": "sound",
        "state_topic": topics.state(stream, group),
        "payload_on": ON,
        "payload_off": OFF,
        "json_attributes_topic": topics.attributes(stream, group),
        **_common(topics, node, stream, model),
    }
    topic = f"{discovery_prefix}/binary_sensor/{node}/{object_id(stream, group)}/config"
    return topic, payload


def score_sensor(
    topics: Topics, discovery_prefix: str, stream: str, group: str, model: str = ""
) -> tuple[str, dict[str, Any]]:
    """The discovery topic and payload of a group's smoothed score (0..1), disabled by
    default: it changes every second, which most homes do not want in their history."""
    node = topics.node
    key = json.dumps(group)  # a Jinja string literal for any group name
    payload = {
        "name": f"{display_name(group)} score",
        "unique_id": f"{device_id(node, stream)}_{topic_safe(group)}_score",
        "state_topic": topics.scores(stream),
        "value_template": f"{{{{ value_json.groups[{key}] }}}}",
        "state_class": "measurement",
        "entity_category": "diagnostic",
        "enabled_by_default": False,
        "suggested_display_precision": 3,
        "icon": "mdi:waveform",
        **_common(topics, node, stream, model),
    }
    topic = f"{discovery_prefix}/sensor/{node}/{object_id(stream, group)}_score/config"
    return topic, payload


def discovery_messages(
    topics: Topics, discovery_prefix: str, stream: str, group: str, model: str = ""
) -> list[tuple[str, str]]:
    """Both discovery messages of one group, payloads as JSON text."""
    return [
        (topic, json.dumps(payload))
        for topic, payload in (
            binary_sensor(topics, discovery_prefix, stream, group, model),
            score_sensor(topics, discovery_prefix, stream, group, model),
        )
    ]


def event_attributes(
    event_id: int,
    onset: float,
    offset: float | None,
    peak: float,
    closed_by: str | None,
) -> dict[str, Any]:
    """The JSON attributes of a group's sensor: its last event.

    ``closed_by``: ``None`` while the event goes on, ``event`` when it ended, ``stream_end``,
    ``stream_silent`` or ``shutdown`` when the bridge turned the state OFF for it.
    """
    return {
        "event_id": event_id,
        "onset": onset,
        "offset": offset,
        "peak": round(float(peak), 4),
        "closed_by": closed_by,
    }

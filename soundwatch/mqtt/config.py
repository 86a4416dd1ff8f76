"""The ``mqtt`` settings: broker URL (with optional user and password), topics, TLS, queue.

The broker is a URL, ``mqtt://[USER:PASS@]HOST[:PORT]`` (port 1883) or ``mqtts://...``
(TLS, port 8883); user and password may be percent-encoded. ``broker: null`` means no MQTT.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator, model_validator

from soundwatch.validation import StrictModel

BROKER_FORMAT = "mqtt://[USER:PASS@]HOST[:PORT] or mqtts://[USER:PASS@]HOST[:PORT]"
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
#: Characters allowed in one topic level and in Home Assistant's node and object ids.
_TOPIC_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")


class BrokerAddress(NamedTuple):
    """A parsed broker URL."""

    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None


def parse_broker_url(url: str) -> BrokerAddress:
    """Split a broker URL; ValueError naming what is wrong and the expected form."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise ValueError(
            f"broker URL {url!r} is not valid ({error}); use {BROKER_FORMAT}"
        ) from None
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError(
            f"broker URL {url!r} must start with mqtt:// or mqtts:// (TLS); use {BROKER_FORMAT}"
        )
    if not parts.hostname:
        raise ValueError(f"broker URL {url!r} has no host; use {BROKER_FORMAT}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"broker URL {url!r} has a path or query; use {BROKER_FORMAT}")
    if parts.password is not None and parts.username is None:
        raise ValueError(f"broker URL {url!r} has a password without a user")
    return BrokerAddress(
        host=parts.hostname,
        port=port or DEFAULT_PORTS[parts.scheme],
        tls=parts.scheme == "mqtts",
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def topic_safe(text: str) -> str:
    """``text`` with every character outside letters, digits, ``_`` and ``-`` made ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text) or "_"


def _check_topic_prefix(value: str, name: str) -> str:
    levels = value.split("/")
    if not value or any(not level for level in levels) or any(c in value for c in "+#\0"):
        raise ValueError(
            f"{name} {value!r} must be one or more non-empty topic levels separated by /, "
            "without +, # or a leading or trailing /"
        )
    return value


class TlsConfig(StrictModel):
    """TLS for an ``mqtts://`` broker; with no files, the system's CA certificates."""

    ca_certs: Path | None = Field(default=None, description="CA bundle that signed the broker")
    certfile: Path | None = Field(default=None, description="client certificate (mutual TLS)")
    keyfile: Path | None = Field(default=None, description="its private key")
    insecure: bool = Field(
        default=False, description="skip the host name check (self-signed test brokers only)"
    )

    @model_validator(mode="after")
    def _files(self) -> TlsConfig:
        for name in ("ca_certs", "certfile", "keyfile"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: no such file {str(path)!r}")
        if self.keyfile is not None and self.certfile is None:
            raise ValueError("keyfile needs certfile (the client certificate it belongs to)")
        return self


class MqttConfig(StrictModel):
    """Where and how soundwatch publishes to MQTT (Home Assistant discovery included)."""

    broker: str | None = Field(default=None, description=f"{BROKER_FORMAT}; null: no MQTT")
    prefix: str = Field(default="soundwatch", description="first levels of every state topic")
    discovery_prefix: str = Field(
        default="homeassistant", description="Home Assistant's discovery prefix"
    )
    node: str | None = Field(
        default=None, description="this machine's name in topics and ids (default: host name)"
    )
    tls: TlsConfig = Field(default_factory=TlsConfig)
    keepalive: int = Field(default=30, ge=5, le=3600, description="seconds between pings")
    reconnect_max_delay: int = Field(
        default=30, ge=1, le=3600, description="cap of the reconnect backoff, seconds"
    )
    queue_size: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="events kept while the broker is away (oldest dropped and counted beyond)",
    )
    clip_url: str | None = Field(
        default=None,
        description="the dashboard's address as Home Assistant reaches it, when it serves "
        "clips (dashboard --record): events carry clip_url = this + clips/ID; null: the "
        "in-process dashboard's own address when it serves clips, else no URL",
    )
    stream_timeout: float = Field(
        default=20.0,
        gt=0.0,
        le=3600.0,
        description="seconds without any message from a stream before its states turn OFF",
    )

    @field_validator("broker")
    @classmethod
    def _broker(cls, value: str | None) -> str | None:
        if value is not None:
            parse_broker_url(value)
        return value

    @field_validator("clip_url")
    @classmethod
    def _clip_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(
                    f"clip_url {value!r} must be the dashboard's http(s)://HOST[:PORT]/ address"
                )
            if not value.endswith("/"):
                value += "/"
        return value

    @field_validator("prefix", "discovery_prefix")
    @classmethod
    def _prefixes(cls, value: str, info) -> str:  # type: ignore[no-untyped-def]
        return _check_topic_prefix(value, info.field_name)

    @field_validator("node")
    @classmethod
    def _node(cls, value: str | None) -> str | None:
        if value is not None and not _TOPIC_SAFE.match(value):
            raise ValueError(
                f"node {value!r} may hold only letters, digits, _ and - (it is a topic level "
                "and part of Home Assistant ids)"
            )
        return value

    @model_validator(mode="after")
    def _tls_needs_mqtts(self) -> MqttConfig:
        tls_set = self.tls != TlsConfig()
        if tls_set and self.broker is not None and not parse_broker_url(self.broker).tls:
            raise ValueError("tls options need an mqtts:// broker URL")
        return self

    @property
    def address(self) -> BrokerAddress:
        """The parsed broker URL (only when ``broker`` is set)."""
        if self.broker is None:
            raise ValueError("no MQTT broker configured")
        return parse_broker_url(self.broker)

    @property
    def node_id(self) -> str:
        """``node``, or this machine's host name made topic-safe."""
        return self.node or topic_safe(socket.gethostname().split(".")[0]).lower()

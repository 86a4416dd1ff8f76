"""The ``edge:`` and ``serve:`` configuration sections (docs/edge.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from soundwatch.endpoints import check_endpoint
from soundwatch.stream.spec import STREAM_ID, STREAM_ID_RULE
from soundwatch.validation import StrictModel

EDGE_TRANSPORTS = ("tcp", "ipc")  # edges and their server are separate processes


class EdgeConfig(StrictModel):
    """An edge node (``soundwatch edge``): where its frames go and how it holds them."""

    to: str | None = Field(default=None, description="the server's tcp://HOST:PORT")
    id: str | None = Field(default=None, description="node id; default: the host name")
    encoding: Literal["float16", "float32"] = "float16"
    buffer_seconds: float = Field(default=30.0, ge=1.0, le=3600.0)  # unacknowledged, per stream
    ack_timeout: float = Field(default=2.0, ge=0.1, le=600.0)  # resend after this long unacked
    health_interval: float = Field(default=5.0, ge=0.1, le=3600.0)
    curve_secret: Path | None = None  # this edge's .key_secret
    curve_server: Path | None = None  # the server's public .key

    @field_validator("to")
    @classmethod
    def _to_is_zmq(cls, value: str | None) -> str | None:
        return None if value is None else check_endpoint(value, EDGE_TRANSPORTS, connect=True)

    @field_validator("id")
    @classmethod
    def _id_is_topic_safe(cls, value: str | None) -> str | None:
        if value is not None and not STREAM_ID.match(value):
            raise ValueError(f"edge.id: {STREAM_ID_RULE}")
        return value

    @model_validator(mode="after")
    def _curve_both_or_neither(self) -> EdgeConfig:
        if (self.curve_secret is None) != (self.curve_server is None):
            raise ValueError(
                "curve_secret and curve_server go together: this edge's secret key file and "
                "the server's public key file"
            )
        return self


class ServeConfig(StrictModel):
    """The listener of ``soundwatch serve``: where edges connect, when one is silent."""

    listen: str | None = Field(default=None, description="tcp://HOST:PORT edges connect to")
    silent_after: float = Field(default=10.0, ge=0.5, le=86400.0)  # s without frames: silent

    @field_validator("listen")
    @classmethod
    def _listen_is_zmq(cls, value: str | None) -> str | None:
        return None if value is None else check_endpoint(value, EDGE_TRANSPORTS)

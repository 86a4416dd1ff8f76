"""The ``control`` section of the configuration: the runtime control endpoint."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from soundwatch.endpoints import check_endpoint
from soundwatch.validation import StrictModel

#: Where ``soundwatch run --control`` listens and ``soundwatch ctl`` asks, by default.
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5558"


class ControlConfig(StrictModel):
    """Change thresholds, enable groups, pause streams and reload the config while running."""

    endpoint: str | None = Field(
        default=None,
        description="ZeroMQ REP endpoint (tcp://127.0.0.1:5558 or ipc://PATH); null = off",
    )
    persist: bool = Field(
        default=False,
        description="keep runtime changes in an overlay file beside the config (never the "
        "config itself) and apply them at the next start",
    )
    overlay: Path | None = Field(
        default=None, description="the overlay file; null = CONFIG.overlay.yaml beside the config"
    )

    @field_validator("endpoint")
    @classmethod
    def _zmq_endpoint(cls, value: str | None) -> str | None:
        return None if value is None else check_endpoint(value)

"""The ``inference:`` config section: which engine runs the tagger and, for Ray, where."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from soundwatch.validation import StrictModel

ENGINES = ("local", "ray")
_HOST_PORT = re.compile(r"^(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")


class ReplicaRange(StrictModel):
    """Autoscaling bounds: Ray Serve adds replicas while requests queue up."""

    min: int = Field(default=1, ge=0, le=1000)
    max: int = Field(default=2, ge=1, le=1000)

    @model_validator(mode="after")
    def _min_not_above_max(self) -> ReplicaRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max}); use min <= max")
        return self


class InferenceConfig(StrictModel):
    """Where forward passes run: in this process (``local``) or on a Ray Serve deployment."""

    engine: Literal[ENGINES] = "local"  # type: ignore[valid-type]
    ray_address: str = "local"  # local | auto | HOST:PORT | ray://HOST:PORT
    replicas: int | ReplicaRange = Field(default=1)
    num_cpus: float = Field(default=1.0, ge=0.0, le=1024.0)  # per replica
    num_gpus: float = Field(default=0.0, ge=0.0, le=64.0)  # per replica
    max_batch: int = Field(default=8, ge=1, le=1024)  # requests (chunks) per replica pass
    batch_wait_s: float = Field(default=0.005, ge=0.0, le=10.0)
    chunk_windows: int = Field(default=8, ge=1, le=1024)  # windows per request
    target_ongoing_requests: float = Field(default=2.0, gt=0.0, le=1000.0)  # autoscaling
    timeout_s: float = Field(default=30.0, gt=0.0, le=3600.0)  # per request, then retried
    start_timeout_s: float = Field(default=120.0, gt=0.0, le=3600.0)

    @field_validator("replicas", mode="before")
    @classmethod
    def _replicas_form(cls, value: object) -> object:
        """One message for either form (not one per member of the union)."""
        if isinstance(value, dict):
            try:
                return ReplicaRange(**value)
            except ValidationError as error:
                raise ValueError("; ".join(e["msg"] for e in error.errors())) from None
        if isinstance(value, bool) or not isinstance(value, int | ReplicaRange):
            raise ValueError("use a number of replicas (N >= 1) or autoscaling {min: M, max: N}")
        if isinstance(value, int) and value < 1:
            raise ValueError("replicas must be at least 1 (a number, or min and max)")
        return value

    @field_validator("ray_address")
    @classmethod
    def _address_form(cls, value: str) -> str:
        value = value.strip()
        if value in ("local", "auto") or _HOST_PORT.match(value):
            return value
        raise ValueError(
            f"{value!r} is not a Ray address; use 'local' (start Ray here), 'auto' (the "
            "cluster this machine joined with `ray start`), HOST:PORT or ray://HOST:PORT"
        )

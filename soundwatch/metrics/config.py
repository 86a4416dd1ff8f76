"""The ``metrics:`` configuration section."""

from __future__ import annotations

from pydantic import Field

from soundwatch.validation import StrictModel

DEFAULT_PORT = 9464  # the port OpenTelemetry's Prometheus exporter uses; change freely


class MetricsConfig(StrictModel):
    """Serve Prometheus metrics from the pipeline process (``soundwatch run --metrics``).

    Loopback by default: metrics name the streams and count what they heard.
    """

    enabled: bool = False
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)  # 0: any free port (printed)

"""Subscribers run inside the pipeline process: the dashboard and the MQTT bridge.

``soundwatch run --dashboard PORT --mqtt URL`` starts the same :class:`DashboardServer` and
:class:`MqttBridge` that ``soundwatch dashboard`` and ``soundwatch mqtt`` run on their own.
They subscribe as any subscriber does, over an in-process ZeroMQ endpoint of their own,
so the pipeline knows nothing about them and ``--wait-for-subscribers`` still counts only
outside subscribers.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from soundwatch.config import Config
from soundwatch.errors import SoundwatchError
from soundwatch.sinks.publisher import ZmqOutput

if TYPE_CHECKING:
    from soundwatch.dashboard.server import DashboardServer
    from soundwatch.metrics.exporter import MetricsExporter
    from soundwatch.mqtt.bridge import MqttBridge
    from soundwatch.security.curve import CurveClient

log = logging.getLogger(__name__)

#: Seconds to wait for the attached subscribers' subscriptions before tagging starts.
SUBSCRIBE_TIMEOUT_S = 5.0


class AttachedSubscribers:
    """The dashboard and MQTT bridge a config asks for, and the endpoint they read."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.output: ZmqOutput | None = None
        self.dashboard: DashboardServer | None = None
        self.bridge: MqttBridge | None = None
        self.metrics: MetricsExporter | None = None

    @property
    def wanted(self) -> bool:
        return (
            self.config.dashboard.enabled
            or self.config.mqtt.broker is not None
            or self.config.metrics.enabled
        )

    def bind(self) -> ZmqOutput:
        """The output the publisher must also send to (bound before anything connects)."""
        endpoint = f"inproc://soundwatch-attached-{id(self):x}"
        self.output = ZmqOutput([endpoint], self.config.publish.high_water_mark)
        return self.output

    def start(self) -> list[str]:
        """Start what the config asks for; return a line per started subscriber."""
        assert self.output is not None, "bind() first"
        endpoints = self.output.endpoints
        started = []
        try:
            if self.config.dashboard.enabled:
                from soundwatch.dashboard.server import DashboardServer

                dash = self.config.dashboard
                recorder = self.config.recorder
                record = recorder.dir if recorder.enabled else None  # its history and clips
                self.dashboard = DashboardServer(
                    endpoints, dash.host, dash.port, token=dash.token, record=record
                ).start()
                started.append(f"dashboard on {self.dashboard.url}")
            if self.config.mqtt.broker is not None:
                from soundwatch.mqtt.bridge import MqttBridge

                self.bridge = MqttBridge(endpoints, self.config.mqtt)
                dashboard = self.dashboard
                if self.bridge.clip_base is None and dashboard and dashboard.record is not None:
                    self.bridge.clip_base = dashboard.url  # events link their clips
                self.bridge.start()
                started.append(f"MQTT to {self.config.mqtt.broker.rpartition('@')[2]}")
            if self.config.metrics.enabled:
                from soundwatch.metrics.exporter import MetricsExporter

                metrics = self.config.metrics
                self.metrics = MetricsExporter(endpoints, metrics.host, metrics.port).start()
                started.append(f"metrics on {self.metrics.url}")
        except BaseException:
            self.close()
            raise
        consumers = len(started)
        if not self.output.wait_for_subscribers(consumers, SUBSCRIBE_TIMEOUT_S):
            self.close()
            raise SoundwatchError(
                f"the attached subscribers ({', '.join(started)}) did not subscribe within "
                f"{SUBSCRIBE_TIMEOUT_S:g} s"
            )
        return started

    def attach_control(self, endpoint: str, curve: CurveClient | None = None) -> None:
        """The run's control endpoint, once bound: the MQTT bridge offers its command
        topics (docs/control.md). ``curve``: in-process keys the endpoint allows, when it
        uses CURVE (``ControlServer.local_client``)."""
        if self.bridge is not None:
            self.bridge.set_control(endpoint, curve)
        if self.dashboard is not None:  # its fields per group
            self.dashboard.history.control = endpoint
            self.dashboard.history.curve = curve

    def close(self) -> None:
        """Stop them; the bridge first handles the last messages already published."""
        if self.bridge is not None:
            self.bridge.close()
            self.bridge = None
        if self.dashboard is not None:
            self.dashboard.close()
            self.dashboard = None
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None

"""The Prometheus exporter: a subscriber that mirrors status, tags and events as metrics.

Per stream, every status counter becomes a counter (``soundwatch_stream_<name>_total``:
samples_in, windows_tagged, windows_dropped, overflows, restarts, events_..., whatever the
run counts), mirrored as the pipeline reports it, so a restart of the pipeline shows as a
counter reset, which Prometheus handles. Started events are counted per group. Latency
comes twice: the percentiles status reports, and a histogram of each tags message's delay
from the end of its audio to its publication. Inference batch sizes and forward-pass times
are histograms from status's ``inference`` field, beside the model's fault counters there
(``soundwatch_inference_failures_total``, ``soundwatch_inference_stalls_total``, and the
``soundwatch_inference_stalled`` gauge). Status fields that are states, not counts
(``device_lost``: 1 while a stream's device is lost and being reopened;
``device_lost_seconds``) are gauges.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from soundwatch.client import CurveClient, Subscriber
from soundwatch.errors import SoundwatchError
from soundwatch.security.curve import is_loopback_endpoint
from soundwatch.sinks.messages import Envelope, Event, Status, Tags

log = logging.getLogger(__name__)

TOPICS = ["status.", "tags.", "events."]
DELAY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")
#: Status counters that are states (they go down again): gauges, not ``_total`` counters.
STATE_COUNTERS = {
    "device_lost": "1 while the stream's device is lost and being reopened",
    "device_lost_seconds": "For how long the stream's device has been lost (0: it is not)",
}
#: The model's fault fields of status's ``inference``: (name, help, is a counter).
INFERENCE_FAULTS = (
    ("inference_failures", "Forward passes that raised (their windows lost)", True),
    ("inference_stalls", "Forward passes that ran past the watchdog's timeout", True),
    ("inference_stalled", "1 while a forward pass runs past the watchdog's timeout", False),
)


class _Mirror:
    """What the exporter last heard, turned into metric families on every scrape."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.status: dict[str, Status] = {}
        self.heard: dict[str, float] = {}  # stream -> monotonic time of its last status
        self.events: Counter[tuple[str, str]] = Counter()  # (stream, group) -> starts
        self.inference: dict[str, float] = {}
        self.subscriber: dict[str, int] = {"received": 0, "malformed": 0, "missed": 0}

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            statuses = dict(self.status)
            heard = dict(self.heard)
            events = dict(self.events)
            inference = dict(self.inference)
            own = dict(self.subscriber)
        yield from self._stream_metrics(statuses, heard)
        started = CounterMetricFamily(
            "soundwatch_events",
            "Sound events started, per stream and group",
            labels=["stream", "group"],
        )
        for (stream, group), count in sorted(events.items()):
            started.add_metric([stream, group], count)
        yield started
        if inference:
            yield from _inference_metrics(inference)
        for name, value in own.items():
            yield CounterMetricFamily(
                f"soundwatch_metrics_messages_{name}",
                f"Messages the exporter {name} (missed: seq gaps before it)",
                value=value,
            )

    @staticmethod
    def _stream_metrics(statuses: dict[str, Status], heard: dict[str, float]) -> Iterator[Metric]:
        counters: dict[str, CounterMetricFamily] = {}
        up = GaugeMetricFamily(
            "soundwatch_stream_up", "1 while the stream runs, 0 once it ended", labels=["stream"]
        )
        failed = GaugeMetricFamily(
            "soundwatch_stream_error", "1 when the stream stopped with an error", labels=["stream"]
        )
        age = GaugeMetricFamily(
            "soundwatch_status_age_seconds", "Seconds since the last status", labels=["stream"]
        )
        latency = GaugeMetricFamily(
            "soundwatch_latency_seconds",
            "Capture-to-publish latency of recent windows (status percentiles)",
            labels=["stream", "quantile"],
        )
        states = {
            name: GaugeMetricFamily(f"soundwatch_stream_{name}", doc, labels=["stream"])
            for name, doc in STATE_COUNTERS.items()
        }
        now = time.monotonic()
        for stream, status in sorted(statuses.items()):
            for name, value in status.counters.items():
                if name in states:
                    states[name].add_metric([stream], value)
                    continue
                metric = _UNSAFE.sub("_", name)
                family = counters.get(metric)
                if family is None:
                    family = counters[metric] = CounterMetricFamily(
                        f"soundwatch_stream_{metric}",
                        f"The stream's {name} counter, as its status reports it",
                        labels=["stream"],
                    )
                family.add_metric([stream], value)
            up.add_metric([stream], 0.0 if status.ended else 1.0)
            failed.add_metric([stream], 1.0 if status.error else 0.0)
            age.add_metric([stream], now - heard[stream])
            for key, quantile in (("p50", "0.5"), ("p99", "0.99"), ("max", "1")):
                if key in status.latency:
                    latency.add_metric([stream, quantile], status.latency[key])
        yield from counters.values()
        yield from states.values()
        yield from (up, failed, age, latency)


def _inference_metrics(inference: dict[str, float]) -> Iterator[Metric]:
    for key, doc, is_counter in INFERENCE_FAULTS:
        if key in inference:
            family = CounterMetricFamily if is_counter else GaugeMetricFamily
            yield family(f"soundwatch_{key}", doc, value=inference[key])
    for name, doc, prefix, total in (
        ("soundwatch_inference_batch_size", "Windows per forward pass", "batch_le_", "windows"),
        ("soundwatch_inference_seconds", "Seconds per forward pass", "seconds_le_", "seconds"),
    ):
        buckets = [
            (floatToGoString(float(key.removeprefix(prefix))), value)  # "inf" -> "+Inf"
            for key, value in inference.items()
            if key.startswith(prefix)
        ]
        if buckets:
            yield HistogramMetricFamily(
                name, doc, buckets=buckets, sum_value=inference.get(total, 0.0)
            )


class MetricsExporter:
    """Subscribe to ``endpoints`` and serve Prometheus metrics on ``host:port``."""

    def __init__(
        self,
        endpoints: list[str],
        host: str = "127.0.0.1",
        port: int = 9464,
        curve: CurveClient | None = None,
    ) -> None:
        self.endpoints = list(endpoints)
        self.host = host
        self.port = port
        self.curve = curve
        self.registry = CollectorRegistry()
        self.mirror = _Mirror()
        self.registry.register(self.mirror)
        self.delay = Histogram(
            "soundwatch_tag_delay_seconds",
            "From the end of a window's audio to its tags message (live sources: capture to "
            "publish)",
            ["stream"],
            buckets=DELAY_BUCKETS,
            registry=self.registry,
        )
        self._server: Any = None
        self._http: threading.Thread | None = None
        self._relay: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> MetricsExporter:
        """Serve and subscribe; errors (port taken, bad host) raise SoundwatchError."""
        if not is_loopback_endpoint(f"tcp://{self.host}:{self.port}"):
            log.warning(
                "metrics on %s:%d can be read by anyone who reaches this machine (stream names "
                "and what they heard); bind 127.0.0.1 or firewall the port",
                self.host,
                self.port,
            )
        try:
            self._server, self._http = start_http_server(self.port, self.host, self.registry)
        except OSError as error:
            raise SoundwatchError(
                f"cannot serve metrics on {self.host}:{self.port}: {error.strerror}; pick "
                "another port with --metrics [HOST:]PORT (0 picks a free one)"
            ) from None
        self.port = self._server.server_address[1]
        subscriber = Subscriber(self.endpoints, topics=TOPICS, curve=self.curve)
        self._relay = threading.Thread(
            target=self._run, args=(subscriber,), name="metrics-relay", daemon=True
        )
        self._relay.start()
        log.info("metrics on %s", self.url)
        return self

    def _run(self, subscriber: Subscriber) -> None:
        try:
            while not self._stop.is_set():
                message = subscriber.receive(timeout=0.2)
                if message is not None:
                    self.observe(message)
                with self.mirror.lock:
                    self.mirror.subscriber.update(
                        received=subscriber.received,
                        malformed=subscriber.malformed,
                        missed=subscriber.gaps,
                    )
        finally:
            subscriber.close()

    def observe(self, message: Envelope) -> None:
        """Take one message into the metrics."""
        mirror = self.mirror
        if isinstance(message, Status):
            with mirror.lock:
                mirror.status[message.stream] = message
                mirror.heard[message.stream] = time.monotonic()
                if message.inference:
                    mirror.inference = dict(message.inference)
        elif isinstance(message, Tags):
            self.delay.labels(message.stream).observe(max(0.0, message.t_pub - message.t_end))
        elif isinstance(message, Event) and message.state == "start":
            with mirror.lock:
                mirror.events[(message.stream, message.label)] += 1

    def close(self) -> None:
        self._stop.set()
        if self._relay is not None:
            self._relay.join(timeout=5)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._http is not None:
            self._http.join(timeout=5)

    def __enter__(self) -> MetricsExporter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

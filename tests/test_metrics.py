"""Prometheus metrics: the exporter subscribed to a real publisher and scraped over HTTP,
and the inference batch counters status carries. (A real run is scraped in
tests/test_health.py.)"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from soundwatch.metrics import InferenceStats
from soundwatch.metrics.exporter import MetricsExporter
from soundwatch.sinks.messages import Event, Status, Tags
from soundwatch.sinks.publisher import Publisher, ZmqOutput

T = TypeVar("T")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def wait_until(condition: Callable[[], T], timeout: float = 20.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def exporter() -> Iterator[tuple[MetricsExporter, Publisher]]:
    output = ZmqOutput(["tcp://127.0.0.1:0"])
    publisher = Publisher([output])
    metrics = MetricsExporter(output.endpoints, "127.0.0.1", 0).start()
    assert output.wait_for_subscribers(3, 20), "the exporter never subscribed"
    yield metrics, publisher
    metrics.close()
    publisher.close()


def test_status_tags_and_events_become_metrics(
    exporter: tuple[MetricsExporter, Publisher],
) -> None:
    metrics, publisher = exporter
    stats = InferenceStats(lambda mels: mels)
    for size in (1, 3, 3, 40):
        stats.infer(np.zeros((size, 4)))
    now = time.time()
    publisher.publish(
        Status(
            "porch",
            now - 10,
            now - 1,
            counters={"samples_in": 320000, "windows_tagged": 15, "overflows": 2, "restarts": 1},
            latency={"p50": 0.12, "p99": 0.4, "max": 0.5, "n": 15},
            inference=stats.snapshot(),
        )
    )
    publisher.publish(Status("attic", now, now, ended=True, error="device vanished"))
    for label in ("dog", "dog", "doorbell"):
        publisher.publish(Event("porch", now, now, label=label, state="start", onset=now))
    publisher.publish(Event("porch", now, now, label="dog", state="end", onset=now, offset=now))
    publisher.publish(Tags("porch", now - 3, now - 0.2, probs=np.zeros(4, np.float32)))

    porch, attic = (("stream", "porch"),), (("stream", "attic"),)
    samples = wait_until(
        lambda: (s := scrape(metrics.url)).get(("soundwatch_tag_delay_seconds_count", porch)) and s,
        what="the tags message in the metrics",
    )
    assert samples[("soundwatch_stream_samples_in_total", porch)] == 320000
    assert samples[("soundwatch_stream_windows_tagged_total", porch)] == 15
    assert samples[("soundwatch_stream_overflows_total", porch)] == 2
    assert samples[("soundwatch_stream_restarts_total", porch)] == 1
    assert samples[("soundwatch_stream_up", porch)] == 1
    assert samples[("soundwatch_stream_up", attic)] == 0
    assert samples[("soundwatch_stream_error", attic)] == 1
    assert samples[("soundwatch_latency_seconds", (("quantile", "0.99"), *porch))] == 0.4
    assert samples[("soundwatch_events_total", (("group", "dog"), *porch))] == 2
    assert samples[("soundwatch_events_total", (("group", "doorbell"), *porch))] == 1
    delay = samples[("soundwatch_tag_delay_seconds_sum", porch)]
    assert 0.2 <= delay < 60  # published just now, 0.2 s after its audio ended
    # Inference: 4 passes of 1, 3, 3 and 40 windows.
    assert samples[("soundwatch_inference_batch_size_count", ())] == 4
    assert samples[("soundwatch_inference_batch_size_sum", ())] == 47
    assert samples[("soundwatch_inference_batch_size_bucket", (("le", "1.0"),))] == 1
    assert samples[("soundwatch_inference_batch_size_bucket", (("le", "4.0"),))] == 3
    assert samples[("soundwatch_inference_batch_size_bucket", (("le", "32.0"),))] == 3
    assert samples[("soundwatch_inference_batch_size_bucket", (("le", "+Inf"),))] == 4
    assert samples[("soundwatch_inference_seconds_count", ())] == 4
    assert samples[("soundwatch_metrics_messages_malformed_total", ())] == 0


def test_inference_stats_pass_results_through_and_count_cumulatively() -> None:
    stats = InferenceStats(lambda mels: ("probs", len(mels)))
    assert stats.infer([1, 2, 3]) == ("probs", 3)
    assert stats.infer([1] * 200) == ("probs", 200)
    snapshot = stats.snapshot()
    assert snapshot["passes"] == 2 and snapshot["windows"] == 203
    assert snapshot["batch_le_2"] == 0 and snapshot["batch_le_4"] == 1
    assert snapshot["batch_le_128"] == 1 and snapshot["batch_le_inf"] == 2
    assert snapshot["seconds_le_inf"] == 2


def test_a_taken_port_is_explained(exporter: tuple[MetricsExporter, Publisher]) -> None:
    from soundwatch.errors import SoundwatchError

    metrics, _ = exporter
    with pytest.raises(SoundwatchError, match=r"cannot serve metrics on 127.0.0.1:\d+.*--metrics"):
        MetricsExporter(["tcp://127.0.0.1:9"], "127.0.0.1", metrics.port).start()


def test_fault_counters_and_states_become_metrics(
    exporter: tuple[MetricsExporter, Publisher],
) -> None:
    """The model's fault counters (status ``inference``) and each stream's losses are
    exported; states that go down again (``device_lost``, ``inference_stalled``) as gauges."""
    metrics, publisher = exporter
    mic = (("stream", "mic"),)
    faults = {"inference_failures": 3, "inference_stalls": 1}

    def send(device_lost: int, stalled: int, windows_failed: int) -> None:
        now = time.time()
        counters = {"device_losses": 4, "device_lost": device_lost, "restarts": 3, "gaps": 4}
        counters["device_lost_seconds"] = 6 * device_lost
        counters |= {"resyncs": 4, "windows_failed": windows_failed, "windows_tagged": 9}
        inference = {**faults, "inference_stalled": stalled, "passes": 12}
        publisher.publish(Status("mic", now, now, counters=counters, inference=inference))

    send(device_lost=1, stalled=1, windows_failed=7)
    samples = wait_until(
        lambda: (s := scrape(metrics.url)).get(("soundwatch_stream_device_lost", mic)) and s,
        what="the lost device in the metrics",
    )
    assert samples[("soundwatch_stream_device_losses_total", mic)] == 4
    assert samples[("soundwatch_stream_restarts_total", mic)] == 3
    assert samples[("soundwatch_stream_gaps_total", mic)] == 4
    assert samples[("soundwatch_stream_resyncs_total", mic)] == 4
    assert samples[("soundwatch_stream_windows_failed_total", mic)] == 7
    assert ("soundwatch_stream_device_lost_total", mic) not in samples  # a state, not a count
    assert samples[("soundwatch_stream_device_lost_seconds", mic)] == 6
    assert samples[("soundwatch_inference_failures_total", ())] == 3
    assert samples[("soundwatch_inference_stalls_total", ())] == 1
    assert samples[("soundwatch_inference_stalled", ())] == 1
    # The device is back and the stalled pass returned: the gauges go down, counters stay.
    send(device_lost=0, stalled=0, windows_failed=8)
    samples = wait_until(
        lambda: (
            (s := scrape(metrics.url))[("soundwatch_stream_windows_failed_total", mic)] == 8 and s
        ),
        what="the second status in the metrics",
    )
    assert samples[("soundwatch_stream_device_lost", mic)] == 0
    assert samples[("soundwatch_stream_device_lost_seconds", mic)] == 0
    assert samples[("soundwatch_inference_stalled", ())] == 0
    assert samples[("soundwatch_inference_failures_total", ())] == 3

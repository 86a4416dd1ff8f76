"""``soundwatch health``: the verdicts on hand-made heartbeats over a real socket, and a real
CURVE-protected run judged healthy (with its Prometheus metrics scraped on the way)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from soundwatch.health import check_health
from soundwatch.security import generate_keys
from soundwatch.sinks.messages import Status
from soundwatch.sinks.publisher import Publisher, ZmqOutput

REPO = Path(__file__).resolve().parent.parent


AGES: dict[int, float] = {}  # id(status) -> seconds its last window ended before sending


def status(
    stream: str = "porch",
    age: float = 1.0,
    inference: dict[str, float] | None = None,
    **counters: int,
) -> Status:
    """A heartbeat whose last window ended ``age`` seconds before it is sent."""
    message = Status(
        stream=stream,
        t_start=0.0,
        t_end=0.0,
        counters={"windows_tagged": 0, "windows_dropped": 0, **counters},
        inference=inference or {},
    )
    AGES[id(message)] = age
    return message


class Heartbeats:
    """A real publisher that sends the given heartbeats, in rounds, until stopped."""

    def __init__(self) -> None:
        self.output = ZmqOutput(["tcp://127.0.0.1:0"])
        self.publisher = Publisher([self.output])
        self.endpoint = self.output.endpoints[0]
        self.rounds: list[list[Status]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        # Start once the health check subscribed; then one round every 0.2 s, the last
        # round repeated (the run goes on as it was).
        self.output.wait_for_subscribers(1, 30)
        index = 0
        while not self._stop.wait(0.2):
            for message in self.rounds[min(index, len(self.rounds) - 1)]:
                message.t_pub = time.time()
                if id(message) in AGES:
                    message.t_end = message.t_pub - AGES[id(message)]
                self.publisher.publish(message)
            index += 1

    def play(self, *rounds: list[Status]) -> str:
        self.rounds = list(rounds)
        self._thread.start()
        return self.endpoint

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.publisher.close()


@pytest.fixture
def beats() -> Iterator[Heartbeats]:
    sender = Heartbeats()
    yield sender
    sender.close()


#: (name, rounds of heartbeats, healthy?, text the verdict must hold)
CASES = [
    (
        "windows flow, no drops",
        [[status(windows_tagged=10)], [status(windows_tagged=14)]],
        True,
        "+4 windows, 0 dropped",
    ),
    (
        "no new windows",
        [[status(windows_tagged=10)], [status(windows_tagged=10)]],
        False,
        "no new window tagged",
    ),
    (
        "inference falls behind",
        [[status(windows_tagged=10)], [status(windows_tagged=14, windows_dropped=3)]],
        False,
        "dropped 3 of 7 windows",
    ),
    (
        "audio overruns",
        [
            [status(windows_tagged=10, samples_in=32000)],
            [status(windows_tagged=14, samples_in=64000, dropped_samples=8000)],
        ],
        False,
        "lost 25% of the audio samples",
    ),
    ("stale windows", [[status(windows_tagged=10, age=120)]], False, "no window tagged for 120 s"),
    (
        "ended with an error",
        [[status(windows_tagged=3)], [Status("porch", 0, 0, ended=True, error="device gone")]],
        False,
        "ended with an error: device gone",
    ),
    (
        "one healthy stream, one ended",
        [
            [status(windows_tagged=5), status("attic", windows_tagged=5)],
            [status(windows_tagged=9), Status("attic", 0, 0, ended=True)],
        ],
        False,
        "stream attic: unhealthy: ended (its source finished)",
    ),
    (
        "device lost briefly: a note",
        [
            [status(windows_tagged=10, device_lost=1, device_losses=1, device_lost_seconds=2)],
            [status(windows_tagged=10, device_lost=1, device_losses=1, device_lost_seconds=3)],
        ],
        True,
        "device lost 3 s ago, reopening",
    ),
    (
        "device lost too long",
        [[status(windows_tagged=10, device_lost=1, device_losses=3, device_lost_seconds=45)]],
        False,
        "its device has been lost for 45 s (limit 30 s; 3 loss(es) so far)",
    ),
    (
        "device back",
        [
            [status(windows_tagged=10, device_lost=0, device_losses=3, restarts=3)],
            [status(windows_tagged=14, device_lost=0, device_losses=3, restarts=3)],
        ],
        True,
        "+4 windows, 0 dropped",
    ),
    (
        "inference stalled",
        [[status(windows_tagged=10, inference={"inference_stalled": 1, "inference_stalls": 1})]],
        False,
        "unhealthy: inference is stalled: a forward pass has run past the watchdog's timeout",
    ),
    (
        "inference failing",
        [
            [status(windows_tagged=10, inference={"inference_failures": 0})],
            [status(windows_tagged=11, windows_failed=6, inference={"inference_failures": 3})],
        ],
        False,
        "unhealthy: inference failed 3 times in",
    ),
    (
        "one transient inference failure: survived",
        [
            [status(windows_tagged=10, inference={"inference_failures": 2})],
            [status(windows_tagged=14, windows_failed=1, inference={"inference_failures": 3})],
        ],
        True,
        "+4 windows, 0 dropped",
    ),
]


@pytest.mark.parametrize(("name", "rounds", "healthy", "text"), CASES, ids=[c[0] for c in CASES])
def test_health_verdicts(
    beats: Heartbeats, name: str, rounds: list[list[Status]], healthy: bool, text: str
) -> None:
    report = check_health(beats.play(*rounds), timeout=20)
    lines = "\n".join(report.lines())
    assert report.healthy is healthy, lines
    assert text in lines


def test_silence_and_a_missing_stream_are_unhealthy(beats: Heartbeats) -> None:
    endpoint = beats.play([status(windows_tagged=1)], [status(windows_tagged=2)])
    report = check_health(endpoint, timeout=5, streams=("porch", "garage"))
    assert not report.healthy
    assert report.problems == ["no status from stream garage within 5 s"]
    quiet = check_health("tcp://127.0.0.1:9", timeout=0.5)
    assert not quiet.healthy and "no status heartbeat" in quiet.problems[0]


# -- a real run with CURVE and metrics -----------------------------------------------------


def run_health(endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "soundwatch.cli", "health", "--endpoint", endpoint, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_real_run_with_curve_is_healthy_and_exports_metrics(shared, tmp_path: Path) -> None:
    weights = shared("models/mn04_as_mAP_432.pt")
    generate_keys(tmp_path, "server")
    generate_keys(tmp_path / "allow", "alice")
    generate_keys(tmp_path, "mallory")
    config = tmp_path / "config.yaml"
    config.write_text("publish:\n  status_interval: 1.0\n")
    port_probe = ZmqOutput(["tcp://127.0.0.1:0"])
    endpoint = port_probe.endpoints[0]
    port_probe.close()
    run = subprocess.Popen(
        [
            *(sys.executable, "-m", "soundwatch.cli", "run", "--config", str(config)),
            *("--source", "yard=synthetic", "--weights", str(weights), "--publish", endpoint),
            *("--curve-secret", str(tmp_path / "server.key_secret")),
            *("--curve-allow", str(tmp_path / "allow"), "--metrics", "127.0.0.1:0"),
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        metrics_url = None
        for line in run.stderr:
            found = re.search(r"metrics on (http://\S+)", line)
            if found:
                metrics_url = found.group(1)
            if "tagging yard" in line:
                break
        assert metrics_url is not None, "the run did not print its metrics address"
        alice = ("--curve-secret", str(tmp_path / "allow" / "alice.key_secret"))
        server_key = ("--curve-server", str(tmp_path / "server.key"))

        # Healthy once windows flow (the first heartbeats come before the first window).
        verdict = run_health(endpoint, *alice, *server_key, "--wait", "--timeout", "90")
        assert verdict.returncode == 0, verdict.stdout + verdict.stderr
        assert "stream yard: ok" in verdict.stdout and verdict.stdout.endswith("healthy\n")

        mallory = run_health(
            endpoint,
            *("--curve-secret", str(tmp_path / "mallory.key_secret"), *server_key),
            *("--timeout", "3"),
        )
        assert mallory.returncode == 1
        assert "the CURVE handshake failed (unknown_key" in mallory.stderr
        plaintext = run_health(endpoint, "--timeout", "3")
        assert plaintext.returncode == 1 and "no status heartbeat" in plaintext.stderr

        metrics = scrape(metrics_url)
        yard = (("stream", "yard"),)
        assert metrics[("soundwatch_stream_windows_tagged_total", yard)] > 0
        assert metrics[("soundwatch_stream_windows_dropped_total", yard)] == 0
        assert metrics[("soundwatch_stream_samples_in_total", yard)] > 0
        assert metrics[("soundwatch_stream_up", yard)] == 1
        assert metrics[("soundwatch_tag_delay_seconds_count", yard)] > 0
        passes = metrics[("soundwatch_inference_batch_size_count", ())]
        assert passes > 0
        assert metrics[("soundwatch_inference_batch_size_bucket", (("le", "+Inf"),))] == passes
        assert metrics[("soundwatch_inference_seconds_count", ())] == passes
        assert metrics[("soundwatch_inference_seconds_sum", ())] > 0
        assert ("soundwatch_latency_seconds", (("quantile", "0.5"), *yard)) in metrics
    finally:
        run.terminate()
        _, rest = run.communicate(timeout=60)
    assert run.returncode == 0, rest


def test_health_command_exits_1_naming_a_lost_device_and_a_stalled_model(
    beats: Heartbeats,
) -> None:
    lost = {"windows_tagged": 10, "device_lost": 1, "device_losses": 2, "device_lost_seconds": 12}
    stalled = {"inference_stalled": 1, "inference_stalls": 1}
    endpoint = beats.play([status(age=12, inference=stalled, **lost)])
    result = run_health(endpoint, "--timeout", "20", "--rounds", "1", "--max-lost", "5")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "unhealthy: inference is stalled" in result.stderr
    assert "stream porch: unhealthy: its device has been lost for 12 s (limit 5 s" in (
        result.stderr
    )

"""``soundwatch tail`` against a real publisher socket."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from soundwatch.sinks.messages import Event, Status, Tags
from soundwatch.sinks.publisher import Publisher, ZmqOutput

REPO = Path(__file__).resolve().parent.parent


def run_tail(*args: str) -> tuple[subprocess.CompletedProcess[str], list]:
    output = ZmqOutput(["tcp://127.0.0.1:0"])
    publisher = Publisher([output])
    process = subprocess.Popen(
        [sys.executable, "-m", "soundwatch.cli", "tail", "--endpoint", output.endpoints[0], *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert output.wait_for_subscribers(1, timeout=60), "tail never subscribed"
    probs = np.zeros(527, np.float32)
    probs[0] = 0.9
    messages = [
        Status(stream="hall", t_start=0.0, t_end=1.0, model="mn04", latency={"p50": 0.05}),
        Tags(stream="hall", t_start=1.0, t_end=4.0, probs=probs, top=[("Speech", 0.9)]),
        Event(stream="hall", t_start=2.0, t_end=2.0, label="dog", state="start", onset=2.0),
        Event(
            stream="hall",
            t_start=2.0,
            t_end=5.5,
            label="dog",
            state="end",
            onset=2.0,
            offset=5.5,
            peak=0.8,
        ),
    ]
    for message in messages:
        publisher.publish(message)
    try:
        stdout, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
        publisher.close()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), messages


def test_tail_prints_tags_events_and_status() -> None:
    result, _ = run_tail("--count", "4")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    assert "status" in lines[0] and "latency p50 50 ms" in lines[0]
    assert "hall" in lines[1] and "Speech 0.90" in lines[1]
    assert "start dog" in lines[2]
    assert "end" in lines[3] and "dog" in lines[3] and "(3.5 s)" in lines[3]


def test_tail_json_filters_by_topic() -> None:
    result, _ = run_tail("--count", "2", "--json", "--topic", "events.")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["state"] for r in records] == ["start", "end"]
    assert records[1]["offset"] == 5.5 and records[0]["seq"] == 0 and records[1]["seq"] == 1


def test_subscribers_refuse_a_bad_endpoint_in_one_line() -> None:
    """A subscriber's endpoint typo is named before connecting (ZeroMQ would wait in silence
    on tcp://:5557 or wrap port 70000), by tail, the dashboard and the MQTT bridge alike."""
    for command, endpoint, problem in (
        (["tail"], "tcp://:5557", "it has no host"),
        (["tail"], "tcp://127.0.0.1:70000", "is not a number from 1 to 65535"),
        (["tail"], "tcp://*:5557", "host * only works when listening"),
        (["dashboard", "--port", "0"], "tcp://127.0.0.1:", "is not a number from 1 to 65535"),
        (["mqtt", "--broker", "mqtt://127.0.0.1:1"], "tcp://:5557", "it has no host"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "soundwatch.cli", *command, "--endpoint", endpoint],
            capture_output=True,
            cwd=REPO,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0
        assert problem in result.stderr, result.stderr
        assert "Traceback" not in result.stderr

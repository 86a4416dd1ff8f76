"""CURVE for every client of soundwatch's sockets, on real sockets, table-driven.

A CURVE publisher (status and tags heartbeats of a stream ``kitchen``) and a CURVE control
endpoint serve the client ``alice`` (her public key is in the allow directory) and not
``mallory`` (a valid pair the server does not know). Each command that connects is run as
a real process with each key: ``tail``, ``health``, ``ctl``, ``dashboard --control`` (its
subscriber and its control client) and ``mqtt --control`` (the same, against a real
Mosquitto). Alice's works; mallory's gets nothing, and says why. Then a real ``soundwatch
run`` with CURVE, ``--control``, ``--dashboard`` and ``--mqtt``: the dashboard and MQTT
bridge inside it reach the CURVE control endpoint with their in-process keys.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from test_control import Stream, handler_for, model_labels  # noqa: F401 (fixture)
from test_mqtt import Broker, Recorder, broker, free_port, wait_until  # noqa: F401 (fixture)

from soundwatch.control.controls import Controls
from soundwatch.control.server import ControlServer
from soundwatch.events import EventsConfig
from soundwatch.security import CurveServer, generate_keys
from soundwatch.sinks.messages import Status, Tags
from soundwatch.sinks.publisher import Publisher, ZmqOutput

REPO = Path(__file__).resolve().parent.parent
NODE = "curvenode"


@dataclass
class Keys:
    root: Path

    def args(self, who: str) -> list[str]:
        """``--curve-secret``/``--curve-server`` of ``who`` (alice is allowed, mallory not)."""
        folder = self.root / "allow" if who == "alice" else self.root
        secret = folder / f"{who}.key_secret"
        return ["--curve-secret", str(secret), "--curve-server", str(self.root / "server.key")]

    def server(self) -> CurveServer:
        return CurveServer(self.root / "server.key_secret", self.root / "allow")


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    generate_keys(tmp_path, "server")
    generate_keys(tmp_path / "allow", "alice")
    generate_keys(tmp_path, "mallory")
    return Keys(tmp_path)


class Served:
    """A CURVE publisher sending heartbeats of ``kitchen`` and a CURVE control endpoint."""

    def __init__(self, keys: Keys, labels) -> None:
        self.output = ZmqOutput(["tcp://127.0.0.1:0"], curve=keys.server())
        self.publisher = Publisher([self.output])
        self.endpoint = self.output.endpoints[0]
        handler = handler_for(EventsConfig(), labels)
        controls = Controls(handler, [Stream("kitchen")], lambda: handler.settings, None, None)
        self.control = ControlServer("tcp://127.0.0.1:0", controls, curve=keys.server()).start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        tagged = 0
        while not self._stop.wait(0.2):
            tagged += 2
            now = time.time()
            probs = np.zeros(4, np.float32)
            groups = {"dog": 0.1}
            tags = Tags("kitchen", now - 3.5, now - 0.5, probs=probs, groups=groups)
            self.publisher.publish(tags)
            counters = {"windows_tagged": tagged, "windows_dropped": 0, "samples_in": tagged}
            status = Status("kitchen", now - 60, now - 0.5, counters=counters, groups=groups)
            self.publisher.publish(status)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.control.close()
        self.publisher.close()


@pytest.fixture
def served(keys: Keys, model_labels) -> Iterator[Served]:  # noqa: F811 (fixture)
    server = Served(keys, model_labels)
    yield server
    server.close()


def soundwatch(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "soundwatch.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
    )


def start(log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "soundwatch.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(20)
    finally:
        process.kill()


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:
        return 0, {}


# -- the commands that ask once: (args after the command, check for alice, for mallory) ----

Check = Callable[[subprocess.CompletedProcess[str]], bool]
ONE_SHOT: dict[str, tuple[Callable[[Served, Path], list[str]], Check, Check]] = {
    "tail": (
        lambda s, _: ["tail", "--endpoint", s.endpoint, "--count", "2", "--timeout", "5"],
        lambda r: r.returncode == 0 and "kitchen" in r.stdout,
        lambda r: r.returncode == 1 and r.stdout == "" and "no message for 5.0 s" in r.stderr,
    ),
    "health": (
        lambda s, _: ["health", "--endpoint", s.endpoint, "--timeout", "5"],
        lambda r: r.returncode == 0 and "healthy" in r.stdout,
        lambda r: r.returncode == 1 and "the CURVE handshake failed (unknown_key" in r.stderr,
    ),
    "ctl": (
        lambda s, _: ["ctl", "--endpoint", s.control.endpoint, "--timeout", "3", "streams"],
        lambda r: r.returncode == 0 and "kitchen" in r.stdout,
        lambda r: r.returncode == 1 and "kitchen" not in r.stdout and "no answer" in r.stderr,
    ),
    # This control endpoint keeps no audio: alice's request is answered, with a refusal.
    "record": (
        lambda s, tmp: (
            [
                *("record", "--endpoint", s.control.endpoint, "--timeout", "3"),
                *("--stream", "kitchen", "--seconds", "1", str(tmp / "example.wav")),
            ]
        ),
        lambda r: r.returncode == 1 and "keeps no audio ring" in r.stderr,
        lambda r: r.returncode == 1 and "no answer" in r.stderr,
    ),
}


@pytest.mark.parametrize("who", ["alice", "mallory"])
@pytest.mark.parametrize("command", list(ONE_SHOT))
def test_one_shot_commands_use_curve(
    command: str, who: str, keys: Keys, served: Served, tmp_path: Path
) -> None:
    make_args, works, refused = ONE_SHOT[command]
    args = make_args(served, tmp_path)
    # The CURVE options go after the command (for ctl: before its subcommand).
    at = len(args) - 1 if command == "ctl" else len(args)
    result = soundwatch(*args[:at], *keys.args(who), *args[at:])
    output = f"{result.returncode}\n{result.stdout}\n{result.stderr}"
    assert (works if who == "alice" else refused)(result), output


@pytest.mark.parametrize("who", ["alice", "mallory"])
def test_the_dashboard_subscribes_and_controls_with_curve(
    who: str, keys: Keys, served: Served, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "dashboard.log"
    process = start(
        log,
        *("dashboard", "--endpoint", served.endpoint, "--control", served.control.endpoint),
        *("--port", str(port), *keys.args(who)),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: get_json(f"{base}/api/snapshot")[0] == 200, 30, "the dashboard")
        status, groups = get_json(f"{base}/api/groups")  # asks the control endpoint
        if who == "alice":
            assert status == 200 and groups["ok"] and groups["result"], groups
            wait_until(
                lambda: "kitchen" in json.dumps(get_json(f"{base}/api/snapshot")[1]),
                20,
                "the stream on the dashboard",
            )
        else:
            assert status == 502 and "no answer" in groups["error"], groups
            wait_until(lambda: "refused this client's key" in log.read_text(), 20, "the refusal")
            assert "kitchen" not in json.dumps(get_json(f"{base}/api/snapshot")[1])
    finally:
        stop(process)


@pytest.mark.parametrize("who", ["alice", "mallory"])
def test_the_mqtt_bridge_subscribes_and_controls_with_curve(
    who: str,
    keys: Keys,
    served: Served,
    broker: Broker,  # noqa: F811 (fixture)
    tmp_path: Path,
) -> None:
    recorder = Recorder(broker.port)
    log = tmp_path / "mqtt.log"
    process = start(
        log,
        *("mqtt", "--broker", broker.url, "--node", NODE, "--endpoint", served.endpoint),
        *("--control", served.control.endpoint, *keys.args(who)),
    )
    try:

        def topics() -> list[str]:
            with recorder._lock:
                return [m.topic for m in recorder.messages]

        wait_until(lambda: f"soundwatch/{NODE}/availability" in topics(), 30, "the bridge")
        streams = [f"soundwatch/{NODE}/kitchen/", f"homeassistant/sensor/{NODE}_kitchen"]

        def heard_stream() -> bool:
            return any(t.startswith(tuple(streams)) or "kitchen" in t for t in topics())

        def offered_control() -> bool:
            return any(t.startswith(f"homeassistant/switch/{NODE}/control_") for t in topics())

        if who == "alice":
            wait_until(heard_stream, 30, "the stream's topics")
            wait_until(offered_control, 30, "the control topics")
        else:
            wait_until(lambda: "refused this client's key" in log.read_text(), 30, "the refusal")
            wait_until(lambda: "mqtt control: no answer" in log.read_text(), 30, "no answer")
            assert not heard_stream() and not offered_control(), topics()
    finally:
        stop(process)
        recorder.close()


def test_dashboard_and_mqtt_inside_a_curve_run_reach_its_control_endpoint(
    keys: Keys,
    broker: Broker,  # noqa: F811 (fixture)
    tmp_path: Path,
    shared,
) -> None:
    """In-process they hold no key files: the run's control server lets in the fresh key
    pair it gave them (before, the endpoint refused them as plaintext clients)."""
    weights = shared("models/mn04_as_mAP_432.pt")
    recorder = Recorder(broker.port)
    port = free_port()
    log = tmp_path / "run.log"
    control = f"tcp://127.0.0.1:{free_port()}"
    process = start(
        log,
        *("run", "--source", "kitchen=synthetic", "--weights", str(weights)),
        *("--publish", f"tcp://127.0.0.1:{free_port()}", "--control", control),
        *("--curve-secret", str(keys.root / "server.key_secret")),
        *("--curve-allow", str(keys.root / "allow")),
        *("--dashboard", str(port), "--mqtt", broker.url),
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def groups() -> dict | None:
            status, answer = get_json(f"{base}/api/groups")
            return answer if status == 200 and answer.get("ok") else None

        assert wait_until(groups, 120, f"the dashboard's groups:\n{log}")["result"]
        wait_until(
            lambda: any(
                m.topic.startswith("homeassistant/switch/") and "/control_" in m.topic
                for m in list(recorder.messages)
            ),
            60,
            "the MQTT control topics",
        )
        assert "mqtt control: no answer" not in log.read_text()
        assert "refused" not in log.read_text(), log.read_text()[-2000:]
    finally:
        stop(process)
        recorder.close()


@pytest.mark.parametrize("name", ["tail", "health", "ctl", "dashboard", "mqtt", "record"])
def test_every_client_command_takes_the_curve_options(name: str) -> None:
    from soundwatch.cli import main

    options = {option for param in main.commands[name].params for option in param.opts}
    assert {"--curve-secret", "--curve-server"} <= options

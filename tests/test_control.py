"""Runtime control over the real ZeroMQ socket: every command, rejected changes that
leave everything as it was, reload, the overlay kept by persist, and soundwatch ctl; then
a real run changed while it runs (status and history show it)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from soundwatch.config import load_config
from soundwatch.control.client import ControlRejected, request
from soundwatch.control.controls import Controls
from soundwatch.control.server import ControlServer
from soundwatch.errors import SoundwatchError
from soundwatch.events import EventsConfig, EventsHandler, build_settings
from soundwatch.labels import read_class_labels
from soundwatch.results import EVENTS, WindowResult

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Stream:
    id: str
    paused: bool = False


@pytest.fixture
def model_labels(shared):
    labels = read_class_labels(shared("models/class_labels_indices.csv"))
    ontology = shared("models/ontology.json")
    return labels, ontology


def handler_for(config: EventsConfig, model_labels) -> EventsHandler:
    labels, ontology = model_labels
    settings = build_settings(config, labels.names, labels.mids, find_ontology=lambda: ontology)
    return EventsHandler(settings, lambda event: None)


def window(handler: EventsHandler, stream: str, start: int) -> WindowResult:
    probs = np.zeros(527, dtype=np.float32)
    return WindowResult(
        stream, start, start + 300, 0.0, 3.0, 0.0, probs, probs, 0.0, False, frozenset({EVENTS})
    )


def test_every_command_over_the_socket(tmp_path: Path, model_labels) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text("events: {groups: {dog: {labels: [Dog], threshold_on: 0.2}}}\n")
    handler = handler_for(load_config(config_file).events, model_labels)
    streams = [Stream("kitchen"), Stream("hall")]
    changes: list[tuple[str, str, dict]] = []

    def reload():
        fresh = load_config(config_file)
        return handler_for(fresh.events, model_labels).settings

    controls = Controls(
        handler, streams, reload, tmp_path / "config.overlay.yaml", lambda *c: changes.append(c)
    )
    server = ControlServer(f"ipc://{tmp_path / 'ctl'}", controls).start()
    endpoint = server.endpoint
    try:
        assert request(endpoint, "streams") == [
            {"id": "kitchen", "paused": False},
            {"id": "hall", "paused": False},
        ]
        groups = request(endpoint, "groups")
        assert {"dog", "siren", "cat"} <= set(groups)
        assert request(endpoint, "get", group="dog") == groups["dog"]
        assert groups["dog"]["threshold_on"] == pytest.approx(0.2)

        # A detector exists before the change; the change reaches it at the next window.
        handler.on_result(window(handler, "kitchen", 0))
        detector = handler.detectors["kitchen"]
        dog = handler.group_index("dog")
        new = request(endpoint, "set", group="dog", values={"threshold_on": 0.5})
        assert new["threshold_on"] == pytest.approx(0.5)
        assert new["threshold_off"] == pytest.approx(0.15)  # the off/on ratio is kept (0.3)
        assert detector.settings.thresholds.on[dog] == pytest.approx(0.2)
        handler.on_result(window(handler, "kitchen", 50))
        assert detector.settings.thresholds.on[dog] == pytest.approx(0.5)
        assert changes[-1][:2] == ("control socket", "set")

        # Rejected changes say why and change nothing.
        before = request(endpoint, "groups")
        for values, reason in [
            ({"threshold_off": 0.9}, "hysteresis needs off <= on"),
            ({"threshold_on": 2}, "less than or equal to 1"),
            ({"min_duration": -1}, "greater than or equal to 0"),
            ({"loudness": 3}, "cannot set loudness"),
            ({"enabled": "maybe"}, "must be true or false"),
        ]:
            with pytest.raises(ControlRejected, match=reason):
                request(endpoint, "set", group="dog", values=values)
        with pytest.raises(ControlRejected, match="no event group 'wolf'"):
            request(endpoint, "set", group="wolf", values={"threshold_on": 0.2})
        with pytest.raises(ControlRejected, match="unknown command"):
            request(endpoint, "explode")
        assert request(endpoint, "groups") == before
        count = len(changes)

        # Disabled: infinite thresholds at the next window; enabled again: back.
        assert request(endpoint, "set", group="dog", values={"enabled": False})["enabled"] is False
        handler.on_result(window(handler, "kitchen", 100))
        assert np.isinf(detector.settings.thresholds.on[dog])
        request(endpoint, "set", group="dog", values={"enabled": True, "min_duration": 1.25})
        handler.on_result(window(handler, "kitchen", 150))
        assert detector.settings.thresholds.on[dog] == pytest.approx(0.5)
        assert request(endpoint, "get", group="dog")["min_duration"] == pytest.approx(1.3)

        assert request(endpoint, "pause", stream="hall") == {"id": "hall", "paused": True}
        assert streams[1].paused and controls.counters("hall")["paused"] == 1
        with pytest.raises(ControlRejected, match="no stream 'attic'"):
            request(endpoint, "pause", stream="attic")
        assert request(endpoint, "resume", stream="hall")["paused"] is False
        assert not streams[1].paused
        assert len(changes) == count + 4

        # Persist: the overlay holds the changes; the user's file is untouched.
        overlay = yaml.safe_load((tmp_path / "config.overlay.yaml").read_text())
        assert overlay["groups"]["dog"]["threshold_on"] == pytest.approx(0.5)
        assert "threshold_on: 0.2" in config_file.read_text()

        # Reload: the file's values, with the overlay over them; a bad file changes nothing.
        config_file.write_text(
            "events: {groups: {dog: {labels: [Dog], threshold_on: 0.2}, "
            "siren: {labels: [Siren], threshold_on: 0.07}}}\n"
        )
        reloaded = request(endpoint, "reload")["groups"]
        assert reloaded["siren"]["threshold_on"] == pytest.approx(0.07)
        assert reloaded["dog"]["threshold_on"] == pytest.approx(0.5)  # kept by the overlay
        config_file.write_text("events: {threshold_on: 7}\n")
        with pytest.raises(ControlRejected, match="threshold_on"):
            request(endpoint, "reload")
        assert request(endpoint, "groups") == reloaded
        config_file.write_text("events: {groups: {dog: {labels: [Dog]}}, preset: null}\n")
        with pytest.raises(ControlRejected, match="changes the event groups"):
            request(endpoint, "reload")
        assert request(endpoint, "groups") == reloaded

        # soundwatch ctl: exit 0 when applied, non-zero with the reason when rejected.
        ok = ctl(endpoint, "set", "dog", "threshold_on=0.4", "max_gap=2")
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["max_gap"] == pytest.approx(2.0)
        refused = ctl(endpoint, "set", "dog", "threshold_off=0.9")
        assert refused.returncode == 1 and "hysteresis needs off <= on" in refused.stderr
        assert ctl(endpoint, "pause", "kitchen").returncode == 0 and streams[0].paused
    finally:
        server.close()

    # At the next start the overlay is applied over the config.
    fresh = handler_for(EventsConfig(), model_labels)
    later = Controls(
        fresh, [Stream("kitchen"), Stream("hall")], overlay=tmp_path / "config.overlay.yaml"
    )
    assert later.apply_overlay() == 2  # dog (set at runtime) and the paused kitchen
    assert later.get("dog")["threshold_on"] == pytest.approx(0.4)
    assert later.streams["kitchen"].paused


def ctl(endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "soundwatch.cli", "ctl", "--endpoint", endpoint, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def test_no_answer_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "soundwatch.cli", "ctl"),
            *("--endpoint", f"ipc://{tmp_path / 'x'}", "--timeout", "0.5", "streams"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 1 and "no answer from" in result.stderr


def test_a_running_soundwatch_changed_live(shared, tmp_path: Path) -> None:
    """soundwatch run --control: a threshold set and a stream paused show in status, and
    both are written to the history."""
    from soundwatch.client import Subscriber

    weights = shared("models/mn04_as_mAP_432.pt")
    music = shared("audio/clips/music.wav")
    pub, control = f"ipc://{tmp_path / 'pub'}", f"ipc://{tmp_path / 'ctl'}"
    record = tmp_path / "rec"
    run = subprocess.Popen(
        [
            *(sys.executable, "-m", "soundwatch.cli", "run", "--source", f"m=file:{music}"),
            *("--loop", "--weights", str(weights), "--publish", pub, "--control", control),
            *("--record", str(record)),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with Subscriber(pub, topics=["status."]) as subscriber:

            def status_where(condition, what: str):
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    assert run.poll() is None, run.stderr.read().decode()
                    message = subscriber.receive(timeout=1.0)
                    if message is not None and condition(message):
                        return message
                raise AssertionError(f"no status where {what}")

            status_where(lambda m: m.counters.get("windows_tagged", 0) > 0, "tagging started")
            assert ctl(control, "set", "music", "threshold_on=0.45").returncode == 0
            assert ctl(control, "pause", "m").returncode == 0
            paused = status_where(
                lambda m: m.counters.get("paused") == 1 and m.counters["paused_samples"] > 0,
                "the stream is paused",
            )
            assert paused.groups["music"] == pytest.approx(0.45)
            assert paused.counters["control_changes"] == 2
            assert ctl(control, "resume", "m").returncode == 0
            status_where(lambda m: m.counters.get("paused") == 0, "the stream resumed")
    finally:
        run.terminate()
        run.wait(timeout=60)
    db = sqlite3.connect(record / "events.sqlite")
    rows = db.execute("SELECT origin, command, detail FROM changes ORDER BY id").fetchall()
    db.close()
    assert [(o, c) for o, c, _ in rows] == [
        ("control socket", "set"),
        ("control socket", "pause"),
        ("control socket", "resume"),
    ]
    assert json.loads(rows[0][2])["now"]["threshold_on"] == pytest.approx(0.45)


@pytest.mark.parametrize(
    ("client", "answered"),
    [
        ("alice", True),  # her public key is in the allow directory
        ("mallory", False),  # a valid key pair the server does not know
        ("impostor-server", False),  # trusts the wrong server key
        (None, False),  # plaintext
    ],
)
def test_a_curve_secured_control_endpoint_answers_only_allowed_clients(
    tmp_path: Path, model_labels, client: str | None, answered: bool
) -> None:
    from soundwatch.security import CurveServer, generate_keys
    from soundwatch.security.curve import CurveClient

    generate_keys(tmp_path, "server")
    generate_keys(tmp_path, "impostor")
    generate_keys(tmp_path / "allow", "alice")
    generate_keys(tmp_path, "mallory")
    curve = {
        "alice": lambda: CurveClient(tmp_path / "allow/alice.key_secret", tmp_path / "server.key"),
        "mallory": lambda: CurveClient(tmp_path / "mallory.key_secret", tmp_path / "server.key"),
        "impostor-server": lambda: CurveClient(
            tmp_path / "allow/alice.key_secret", tmp_path / "impostor.key"
        ),
        None: lambda: None,
    }[client]()
    handler = handler_for(EventsConfig(), model_labels)
    controls = Controls(handler, [Stream("kitchen")], lambda: handler.settings, None, None)
    server_keys = CurveServer(tmp_path / "server.key_secret", tmp_path / "allow")
    server = ControlServer("tcp://127.0.0.1:0", controls, curve=server_keys).start()
    try:
        if answered:
            assert request(server.endpoint, "streams", curve=curve) == [
                {"id": "kitchen", "paused": False}
            ]
        else:
            with pytest.raises(SoundwatchError, match=r"no answer .* CURVE"):
                request(server.endpoint, "streams", timeout=1.0, curve=curve)
        assert server.requests == (1 if answered else 0)
    finally:
        server.close()

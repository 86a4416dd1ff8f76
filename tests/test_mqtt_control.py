"""MQTT command topics against a real Mosquitto: a group's switch and threshold number
(Home Assistant discovery), sent on to a real control endpoint, a rejected command that
changes nothing, and a real ``soundwatch run --mqtt --control`` changed from MQTT."""

# ruff: noqa: F811 (the fixtures imported from test_mqtt and test_control are parameters)
from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_control import Stream, handler_for, model_labels, window  # noqa: F401 (fixture)
from test_mqtt import BASE, NODE, REPO, Broker, Feed, Recorder, broker, feed, recorder, wait_until  # noqa: F401
from test_mqtt import config as bridge_config

from soundwatch.client import Subscriber
from soundwatch.config import load_config
from soundwatch.control.client import request
from soundwatch.control.controls import Controls
from soundwatch.control.server import ControlServer
from soundwatch.mqtt import MqttBridge
from soundwatch.mqtt.control import control_discovery
from soundwatch.mqtt.discovery import Topics

CONTROL = f"{BASE}/control"


def result_where(recorder: Recorder, index: int) -> dict:
    """The ``index``-th message on the result topic (waits for it)."""
    found = wait_until(
        lambda: len(recorder.on(f"{CONTROL}/result")) > index, what=f"result #{index + 1}"
    )
    assert found
    return recorder.on(f"{CONTROL}/result")[index].json()


def test_discovery_of_a_group_switch_and_number() -> None:
    topics = Topics("soundwatch", NODE)
    (switch_topic, switch), (number_topic, number) = control_discovery(
        topics, "homeassistant", "glass breaking"
    )
    assert switch_topic == f"homeassistant/switch/{NODE}/control_glass_breaking/config"
    assert number_topic == f"homeassistant/number/{NODE}/control_glass_breaking_threshold/config"
    assert switch["command_topic"] == f"{CONTROL}/glass_breaking/enabled/set"
    assert switch["state_topic"] == f"{CONTROL}/glass_breaking/enabled"
    assert (switch["payload_on"], switch["payload_off"]) == ("ON", "OFF")
    assert number["command_topic"] == f"{CONTROL}/glass_breaking/threshold/set"
    assert (number["min"], number["max"]) == (0.0, 1.0)
    assert (
        switch["device"]["identifiers"] == number["device"]["identifiers"] == [f"soundwatch_{NODE}"]
    )
    assert switch["unique_id"] != number["unique_id"]
    assert switch["entity_category"] == number["entity_category"] == "config"


def test_commands_go_through_the_control_endpoint(
    tmp_path: Path, broker: Broker, recorder: Recorder, feed: Feed, model_labels, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="soundwatch")
    config_file = tmp_path / "config.yaml"
    config_file.write_text("events: {groups: {dog: {labels: [Dog], threshold_on: 0.2}}}\n")
    handler = handler_for(load_config(config_file).events, model_labels)
    changes: list[tuple] = []
    controls = Controls(handler, [Stream("yard")], on_change=lambda *c: changes.append(c))
    server = ControlServer(f"ipc://{tmp_path / 'ctl'}", controls).start()
    bridge = MqttBridge(
        feed.endpoint, bridge_config(broker), control=server.endpoint, control_poll=0.3
    )
    bridge.start()
    try:
        # Discovery and the states in force, retained.
        switch = wait_until(
            lambda: recorder.on(f"homeassistant/switch/{NODE}/control_dog/config"), what="switch"
        )
        assert switch[-1].json()["command_topic"] == f"{CONTROL}/dog/enabled/set"
        recorder.wait_latest(f"{CONTROL}/dog/enabled", "ON")
        recorder.wait_latest(f"{CONTROL}/dog/threshold", "0.2")
        assert recorder.on(f"homeassistant/number/{NODE}/control_dog_threshold/config")

        # A threshold: applied by the controls at the next window, kept by the history hook.
        handler.on_result(window(handler, "yard", 0))
        detector, dog = handler.detectors["yard"], handler.group_index("dog")
        recorder.publish(f"{CONTROL}/dog/threshold/set", "0.5")
        ok = result_where(recorder, 0)
        assert ok["ok"] and ok["group"] == "dog" and ok["now"]["threshold_on"] == 0.5
        assert controls.get("dog")["threshold_on"] == pytest.approx(0.5)
        assert controls.get("dog")["threshold_off"] == pytest.approx(0.15)  # ratio kept
        recorder.wait_latest(f"{CONTROL}/dog/threshold", "0.5")
        assert changes[-1][:2] == ("mqtt via control socket", "set")
        assert detector.settings.thresholds.on[dog] == pytest.approx(0.2)
        handler.on_result(window(handler, "yard", 50))
        assert detector.settings.thresholds.on[dog] == pytest.approx(0.5)

        # The switch: OFF disables the group (infinite thresholds at the next window).
        recorder.publish(f"{CONTROL}/dog/enabled/set", "OFF")
        assert result_where(recorder, 1)["now"]["enabled"] is False
        recorder.wait_latest(f"{CONTROL}/dog/enabled", "OFF")
        handler.on_result(window(handler, "yard", 100))
        assert detector.settings.thresholds.on[dog] == float("inf")

        # Rejected: nothing changes, the reason is logged and published, and the state in
        # force is published again (so Home Assistant drops the refused value).
        before, count = request(server.endpoint, "groups"), len(changes)
        shown = len(recorder.on(f"{CONTROL}/dog/threshold"))
        recorder.publish(f"{CONTROL}/dog/threshold/set", "1.5")
        refused = result_where(recorder, 2)
        assert refused["ok"] is False and refused["payload"] == "1.5"
        assert "less than or equal to 1" in refused["error"]
        wait_until(lambda: len(recorder.on(f"{CONTROL}/dog/threshold")) > shown, what="again")
        assert recorder.latest(f"{CONTROL}/dog/threshold") == "0.5"
        recorder.publish(f"{CONTROL}/dog/enabled/set", "maybe")
        assert "must be true or false" in result_where(recorder, 3)["error"]
        recorder.publish(f"{CONTROL}/wolf/threshold/set", "0.3")
        assert "no event group 'wolf'" in result_where(recorder, 4)["error"]
        assert request(server.endpoint, "groups") == before and len(changes) == count
        assert "rejected threshold='1.5' for dog" in caplog.text

        # A change made elsewhere (soundwatch ctl) reaches Home Assistant too.
        request(server.endpoint, "set", group="dog", values={"enabled": True})
        recorder.wait_latest(f"{CONTROL}/dog/enabled", "ON")
    finally:
        bridge.close()
        server.close()
    assert bridge.counters.control_commands == 5
    assert bridge.counters.control_rejected == 3


def test_real_run_changed_from_mqtt(
    shared, tmp_path: Path, broker: Broker, recorder: Recorder
) -> None:
    """soundwatch run --mqtt --control: the in-process bridge sends a threshold to the run's
    own endpoint; status and the history show it, and a refused one changes nothing."""
    weights = shared("models/mn04_as_mAP_432.pt")
    music = shared("audio/clips/music.wav")
    pub, control = f"ipc://{tmp_path / 'pub'}", f"ipc://{tmp_path / 'ctl'}"
    config_file = tmp_path / "config.yaml"
    config_file.write_text(f"mqtt: {{node: {NODE}}}\n")
    record = tmp_path / "rec"
    run = subprocess.Popen(
        [
            *(sys.executable, "-m", "soundwatch.cli", "run", "--config", str(config_file)),
            *("--source", f"m=file:{music}", "--loop", "--weights", str(weights)),
            *("--publish", pub, "--control", control, "--mqtt", broker.url),
            *("--record", str(record)),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with Subscriber(pub, topics=["status."]) as subscriber:
            topic = f"{CONTROL}/music/threshold"
            first = wait_until(lambda: recorder.latest(topic), 120, "the music threshold")
            assert float(first) != 0.45
            recorder.publish(f"{CONTROL}/music/threshold/set", "2")
            assert "less than or equal to 1" in result_where(recorder, 0)["error"]
            recorder.publish(f"{CONTROL}/music/threshold/set", "0.45")
            assert result_where(recorder, 1)["ok"]
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                assert run.poll() is None, run.stderr.read().decode()
                message = subscriber.receive(timeout=1.0)
                if message is not None and message.counters.get("control_changes") == 1:
                    break
            else:
                raise AssertionError("no status with the change")
            assert message.groups["music"] == pytest.approx(0.45)
    finally:
        run.terminate()
        run.wait(timeout=60)
    db = sqlite3.connect(record / "events.sqlite")
    rows = db.execute("SELECT origin, command, detail FROM changes ORDER BY id").fetchall()
    db.close()
    assert [(o, c) for o, c, _ in rows] == [("mqtt via control socket", "set")]
    assert json.loads(rows[0][2])["now"]["threshold_on"] == pytest.approx(0.45)

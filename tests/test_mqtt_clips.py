# ruff: noqa: F811 (the fixtures imported from test_mqtt are parameters)
"""MQTT event messages name the event's history id and, when a dashboard serves the
record directory, its clip's address: hand-made events, then a real run whose clip is
fetched from the in-process dashboard at the address the MQTT message gives."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from test_mqtt import (  # noqa: F401
    BASE,
    NODE,
    REPO,
    Broker,
    Feed,
    Recorder,
    broker,
    event,
    feed,
    recorder,
    silence_bark_silence,
    status,
    wait_for_event,
    wait_until,
)
from test_mqtt import config as bridge_config

from soundwatch.mqtt import MqttBridge
from soundwatch.recorder.history import History


def test_events_carry_record_id_and_clip_url(broker: Broker, recorder: Recorder, feed: Feed):
    bridge = MqttBridge(feed.endpoint, bridge_config(broker, clip_url="http://nas.local:8080"))
    bridge.start()
    try:
        feed.wait_for_bridge()
        recorded = event("yard", "dog", 1, "start", 100.0)
        recorded.record_id = 42
        ended = event("yard", "dog", 1, "end", 100.0, offset=103.0)
        ended.record_id = 42
        unrecorded = event("yard", "dog", 2, "end", 110.0, offset=111.0)
        feed.send(status("yard", {"dog": 0.2}), recorded, ended, unrecorded)
        wait_for_event(recorder, "yard", 2, "end")
    finally:
        bridge.close()
    start, end, other = [m.json() for m in recorder.on(f"{BASE}/yard/events")]
    assert start["record_id"] == end["record_id"] == 42
    assert "clip_url" not in start  # no clip before the event ends
    assert end["clip_url"] == "http://nas.local:8080/clips/42"
    assert other["record_id"] == -1 and "clip_url" not in other


def test_real_run_links_the_clip_served_by_its_dashboard(
    shared, tmp_path: Path, broker: Broker, recorder: Recorder
) -> None:
    weights = shared("models/mn04_as_mAP_432.pt")
    path, _ = silence_bark_silence(shared, tmp_path)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(f"mqtt: {{node: {NODE}}}\n")
    record = tmp_path / "rec"
    run = subprocess.Popen(
        [
            *(sys.executable, "-m", "soundwatch.cli", "run", "--config", str(config_file)),
            *("--source", f"yard=file:{path}", "--loop", "--weights", str(weights)),
            *("--publish", f"ipc://{tmp_path / 'pub'}", "--mqtt", broker.url),
            *("--record", str(record), "--dashboard", "0"),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def dog_end() -> dict | None:
        assert run.poll() is None, run.stderr.read().decode()
        for message in recorder.on(f"{BASE}/yard/events"):
            body = message.json()
            if body["label"] == "dog" and body["state"] == "end":
                return body
        return None

    def fetch(url: str) -> bytes | None:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            assert error.code == 404, error
            return None  # the clip is written after the post-roll

    try:
        ended = wait_until(dog_end, 180, "a dog event's end")
        assert ended["record_id"] >= 1
        url = ended["clip_url"]
        assert url.startswith("http://127.0.0.1:") and url.endswith(f"/clips/{ended['record_id']}")
        body = wait_until(lambda: fetch(url), 60, "the clip")
        history = History(record, create=False)
        row = history.get(ended["record_id"])
        history.close()
        assert row["label"] == "dog" and row["clip"] is not None
        assert body == Path(row["clip"]).read_bytes() and body[:4] == b"fLaC"
        base = url.rsplit("/clips/", 1)[0]
        try:
            urllib.request.urlopen(f"{base}/clips/999999", timeout=10)
            raise AssertionError("an unknown id was served")
        except urllib.error.HTTPError as error:
            assert error.code == 404 and b"no event 999999" in error.read()
    finally:
        run.terminate()
        run.wait(timeout=60)

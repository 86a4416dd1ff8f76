"""Home Assistant over MQTT against a real Mosquitto broker.

Each test starts ``mosquitto`` on a free loopback port with a small generated config and
records every message with a real paho subscriber. The bridge reads real ZeroMQ sockets:
hand-made messages from a real publisher, or the real ``soundwatch run`` replaying a file.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import paho.mqtt.client as paho
import pytest
from conftest import require_executable, require_module
from paho.mqtt.enums import CallbackAPIVersion

from soundwatch.client import Subscriber
from soundwatch.errors import SoundwatchError
from soundwatch.mqtt import MqttBridge, MqttConfig
from soundwatch.mqtt.config import parse_broker_url, topic_safe
from soundwatch.mqtt.discovery import Topics, binary_sensor, discovery_messages, score_sensor
from soundwatch.sinks.messages import Event, Status, Tags
from soundwatch.sinks.publisher import Publisher, ZmqOutput
from soundwatch.validation import parse_section

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")
NODE = "testnode"
BASE = f"soundwatch/{NODE}"


def wait_until(condition: Callable[[], T], timeout: float = 20.0, what: str = "") -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Broker:
    """A real mosquitto on a loopback port; stop() and start() keep the port."""

    def __init__(self, executable: str, directory: Path, settings: str = "") -> None:
        self.executable = executable
        self.port = free_port()
        self.conf = directory / "mosquitto.conf"
        # As root, mosquitto would become the user "mosquitto", who cannot read tmp_path.
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\npersistence false\n{user}"
            + (settings or "allow_anonymous true\n")
        )
        self.log = directory / "mosquitto.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [self.executable, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )

        def accepting() -> bool:
            assert self.process.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                return False
            return True

        wait_until(accepting, 20, "mosquitto to accept connections")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    server = Broker(require_executable("mosquitto"), tmp_path)
    server.start()
    yield server
    server.stop()


@dataclass
class Received:
    at: float  # time.time() when it arrived
    topic: str
    payload: str
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Recorder:
    """A paho client subscribed to everything; resubscribes after a broker restart."""

    def __init__(self, port: int, ca: Path | None = None, login: tuple[str, str] | None = None):
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"recorder-{port}")
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
        if login is not None:
            self.client.username_pw_set(*login)
        self.client.on_connect = lambda client, *_: client.subscribe("#", qos=1)
        self.client.on_message = self._record
        self.client.reconnect_delay_set(1, 1)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "the recorder could not subscribe"

    def _record(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(
                Received(time.time(), message.topic, message.payload.decode(), message.retain)
            )

    def on(self, topic: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def latest(self, topic: str) -> str | None:
        found = self.on(topic)
        return found[-1].payload if found else None

    def wait_latest(self, topic: str, payload: str, timeout: float = 20.0) -> Received:
        def arrived() -> Received | None:
            found = self.on(topic)
            return found[-1] if found and found[-1].payload == payload else None

        return wait_until(arrived, timeout, f"{payload!r} on {topic}")

    def publish(self, topic: str, payload: str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def recorder(broker: Broker) -> Iterator[Recorder]:
    client = Recorder(broker.port)
    yield client
    client.close()


class Feed:
    """A real soundwatch publisher socket sending hand-made messages."""

    def __init__(self) -> None:
        self.output = ZmqOutput(["tcp://127.0.0.1:0"])
        self.publisher = Publisher([self.output])
        self.endpoint = self.output.endpoints[0]

    def wait_for_bridge(self) -> None:
        assert self.output.wait_for_subscribers(3, timeout=30), "the bridge never subscribed"

    def send(self, *messages: Any) -> None:
        for message in messages:
            self.publisher.publish(message)

    def close(self) -> None:
        self.publisher.close()


@pytest.fixture
def feed() -> Iterator[Feed]:
    publisher = Feed()
    yield publisher
    publisher.close()


def status(stream: str, groups: dict[str, float], ended: bool = False) -> Status:
    now = time.time()
    return Status(stream=stream, t_start=now, t_end=now, model="mn04", groups=groups, ended=ended)


def event(stream: str, label: str, event_id: int, state: str, onset: float, **kw: Any) -> Event:
    offset = kw.pop("offset", None)
    return Event(
        stream=stream,
        t_start=onset,
        t_end=offset if offset is not None else onset,
        event_id=event_id,
        label=label,
        state=state,
        onset=onset,
        offset=offset,
        peak=kw.pop("peak", 0.5),
    )


def tags(stream: str, groups: dict[str, float], t_end: float) -> Tags:
    probs = np.zeros(527, np.float32)
    return Tags(stream=stream, t_start=t_end - 3, t_end=t_end, probs=probs, groups=groups)


def wait_for_event(recorder: Recorder, stream: str, event_id: int, state: str) -> None:
    """Wait until the broker has the bridge's event message ``(event_id, state)``."""
    wait_until(
        lambda: any(
            (m.json()["event_id"], m.json()["state"]) == (event_id, state)
            for m in recorder.on(f"{BASE}/{stream}/events")
        ),
        what=f"event {event_id} {state} on {stream}",
    )


def config(broker: Broker, **overrides: Any) -> MqttConfig:
    return MqttConfig(broker=broker.url, node=NODE, **overrides)


# -- configuration and discovery payloads (no broker) ----------------------------------


def test_broker_urls_parse_or_fail_clearly() -> None:
    plain = parse_broker_url("mqtt://ha.local")
    assert (plain.host, plain.port, plain.tls, plain.username) == ("ha.local", 1883, False, None)
    secure = parse_broker_url("mqtts://me:p%40ss@10.0.0.2:8884")
    assert (secure.host, secure.port, secure.tls) == ("10.0.0.2", 8884, True)
    assert (secure.username, secure.password) == ("me", "p@ss")
    assert parse_broker_url("mqtts://broker").port == 8883
    bad = {
        "http://broker": "must start with mqtt://",
        "mqtt://": "has no host",
        "mqtt://broker:99999": "not valid",
        "mqtt://broker/topic": "has a path",
        "broker:1883": "must start with mqtt://",
    }
    for url, reason in bad.items():
        with pytest.raises(SoundwatchError) as raised:
            parse_section(MqttConfig, {"broker": url}, "config.yaml", ("mqtt",))
        assert "mqtt.broker" in str(raised.value) and reason in str(raised.value), url
    with pytest.raises(SoundwatchError, match=r"mqtt\.node"):
        parse_section(MqttConfig, {"broker": "mqtt://b", "node": "my/node"}, "x", ("mqtt",))
    with pytest.raises(SoundwatchError, match=r"mqtt\.prefix"):
        parse_section(MqttConfig, {"broker": "mqtt://b", "prefix": "a/#"}, "x", ("mqtt",))
    with pytest.raises(SoundwatchError, match="need an mqtts:// broker"):
        parse_section(MqttConfig, {"broker": "mqtt://b", "tls": {"insecure": True}}, "x")
    with pytest.raises(SoundwatchError, match="no MQTT broker given"):
        MqttBridge("tcp://127.0.0.1:5557", MqttConfig())
    assert MqttConfig().node_id  # the host name, topic-safe
    assert "." not in MqttConfig().node_id


def test_discovery_payloads_follow_home_assistant_conventions() -> None:
    jinja2 = require_module("jinja2")
    topics = Topics("soundwatch", "den")
    topic, sensor = binary_sensor(topics, "homeassistant", "kitchen", "glass_breaking", "mn04")
    assert topic == "homeassistant/binary_sensor/den/kitchen_glass_breaking/config"
    assert sensor["name"] == "Glass breaking"
    assert sensor["device_class"] == "sound"
    assert sensor["state_topic"] == "soundwatch/den/kitchen/glass_breaking/state"
    assert sensor["json_attributes_topic"] == "soundwatch/den/kitchen/glass_breaking/attributes"
    assert (sensor["payload_on"], sensor["payload_off"]) == ("ON", "OFF")
    assert sensor["availability"] == [
        {
            "topic": "soundwatch/den/availability",
            "payload_available": "online",
            "payload_not_available": "offline",
        }
    ]
    assert sensor["origin"]["name"] == "soundwatch" and sensor["origin"]["sw_version"]
    assert sensor["device"]["identifiers"] == ["soundwatch_den_kitchen"]
    assert sensor["device"]["model"] == "mn04"
    score_topic, score = score_sensor(topics, "homeassistant", "kitchen", "glass_breaking")
    assert score_topic == "homeassistant/sensor/den/kitchen_glass_breaking_score/config"
    assert score["enabled_by_default"] is False
    assert score["state_class"] == "measurement"
    assert score["state_topic"] == "soundwatch/den/kitchen/scores"
    assert score["device"]["identifiers"] == sensor["device"]["identifiers"]  # one device
    # The value template picks the group's score out of a scores message, whatever its name.
    for name in ("glass_breaking", 'it\'s "odd" é'):
        _, odd = score_sensor(topics, "homeassistant", "kitchen", name)
        rendered = (
            jinja2.Environment()
            .from_string(odd["value_template"])
            .render(value_json={"t_end": 1.0, "groups": {name: 0.125, "other": 0.5}})
        )
        assert rendered == "0.125"
    # Unique ids differ across groups, kinds, streams and nodes; topics are MQTT-safe.
    ids = set()
    for node in ("den", "attic"):
        for stream in ("kitchen", "hall"):
            for group in ("dog", "speech", "door wood+knock#"):
                for topic, payload in discovery_messages(
                    Topics("soundwatch", node), "homeassistant", stream, group
                ):
                    body = json.loads(payload)
                    ids.add(body["unique_id"])
                    assert not set("+# ") & set(topic + body["state_topic"])
    assert len(ids) == 2 * 2 * 3 * 2


# -- the bridge with hand-made messages ------------------------------------------------


def test_states_attributes_events_scores_and_discovery(
    broker: Broker, recorder: Recorder, feed: Feed
) -> None:
    # A state left ON by an earlier run that was killed: the bridge turns it OFF at start.
    stale = f"{BASE}/garage/dog/state"
    recorder.publish(stale, "ON", retain=True)
    bridge = MqttBridge(feed.endpoint, config(broker))
    bridge.start()
    try:
        feed.wait_for_bridge()
        recorder.wait_latest(f"{BASE}/availability", "online")
        recorder.wait_latest(stale, "OFF")
        feed.send(status("hall", {"dog": 0.02, "speech": 0.3}))
        for group in ("dog", "speech"):
            config_topic = f"homeassistant/binary_sensor/{NODE}/hall_{group}/config"
            found = wait_until(lambda t=config_topic: recorder.on(t), what=config_topic)
            assert found[0].retain is False  # live delivery; the broker keeps it retained
            assert found[0].json()["state_topic"] == f"{BASE}/hall/{group}/state"
            score_topic = f"homeassistant/sensor/{NODE}/hall_{group}_score/config"
            wait_until(lambda t=score_topic: recorder.on(t), what=score_topic)
            recorder.wait_latest(f"{BASE}/hall/{group}/state", "OFF")

        # A bark: ON with its attributes, then OFF; both events on the events topic.
        t0 = time.time()
        feed.send(event("hall", "dog", 0, "start", t0, peak=0.4))
        on = recorder.wait_latest(f"{BASE}/hall/dog/state", "ON")
        attributes = json.loads(recorder.latest(f"{BASE}/hall/dog/attributes"))
        assert attributes == {
            "event_id": 0,
            "onset": t0,
            "offset": None,
            "peak": 0.4,
            "closed_by": None,
        }
        feed.send(event("hall", "dog", 0, "end", t0, offset=t0 + 2.5, peak=0.9))
        off = recorder.wait_latest(f"{BASE}/hall/dog/state", "OFF")
        assert off.at >= on.at
        attributes = json.loads(recorder.latest(f"{BASE}/hall/dog/attributes"))
        assert attributes["offset"] == t0 + 2.5 and attributes["closed_by"] == "event"
        events = wait_until(
            lambda: (
                len(recorder.on(f"{BASE}/hall/events")) == 2
                and [m.json() for m in recorder.on(f"{BASE}/hall/events")]
            )
        )
        assert [(e["label"], e["state"], e["event_id"]) for e in events] == [
            ("dog", "start", 0),
            ("dog", "end", 0),
        ]
        assert events[1]["offset"] == t0 + 2.5 and events[1]["stream"] == "hall"

        # Scores: tags every 0.1 s for 2.5 s give at most one scores message a second.
        start = time.time()
        while (now := time.time()) < start + 2.5:
            feed.send(tags("hall", {"dog": 0.25, "speech": 0.01}, now))
            time.sleep(0.1)  # the pace of the fake pipeline, not a wait for a condition
        wait_until(lambda: len(recorder.on(f"{BASE}/hall/scores")) >= 2)
        scores = [m.json() for m in recorder.on(f"{BASE}/hall/scores")]
        assert 2 <= len(scores) <= 3, [s["t_end"] for s in scores]
        assert scores[0]["groups"] == {"dog": 0.25, "speech": 0.01}
        gaps = np.diff([s["t_end"] for s in scores])
        assert (gaps > 0.8).all(), gaps

        # A group first seen in an event is announced on the spot, and ON without an OFF
        # before it.
        feed.send(event("hall", "glass_breaking", 1, "start", time.time()))
        recorder.wait_latest(f"{BASE}/hall/glass_breaking/state", "ON")
        assert [m.payload for m in recorder.on(f"{BASE}/hall/glass_breaking/state")] == ["ON"]
        announced = recorder.on(f"homeassistant/binary_sensor/{NODE}/hall_glass_breaking/config")
        assert (
            announced and announced[0].at <= recorder.on(f"{BASE}/hall/glass_breaking/state")[0].at
        )

        # The stream ends with a sound going on: OFF, attributes say why.
        feed.send(status("hall", {"dog": 0.02, "speech": 0.3}, ended=True))
        recorder.wait_latest(f"{BASE}/hall/glass_breaking/state", "OFF")
        closed = json.loads(recorder.latest(f"{BASE}/hall/glass_breaking/attributes"))
        assert closed["closed_by"] == "stream_end" and closed["event_id"] == 1

        # Home Assistant restarts: its birth message brings the discovery again.
        before = len(recorder.on(f"homeassistant/binary_sensor/{NODE}/hall_dog/config"))
        recorder.publish("homeassistant/status", "online")
        wait_until(
            lambda: (
                len(recorder.on(f"homeassistant/binary_sensor/{NODE}/hall_dog/config")) > before
            ),
            what="discovery after the birth message",
        )

        # Shutdown with a sound going on: OFF, then offline (a clean disconnect: no will).
        feed.send(event("hall", "speech", 2, "start", time.time()))
        recorder.wait_latest(f"{BASE}/hall/speech/state", "ON")
    finally:
        bridge.close()
    recorder.wait_latest(f"{BASE}/hall/speech/state", "OFF")
    offline = recorder.wait_latest(f"{BASE}/availability", "offline")
    assert recorder.on(f"{BASE}/hall/speech/state")[-1].at <= offline.at
    counters = bridge.counters
    assert counters.dropped == 0 and counters.scores_dropped == 0 and counters.missed == 0
    assert counters.stale_cleared == 1 and counters.connects == 1
    assert not bridge.running


def test_silent_stream_turns_off(broker: Broker, recorder: Recorder, feed: Feed) -> None:
    """A producer that dies without a final status leaves nothing ON."""
    with MqttBridge(feed.endpoint, config(broker, stream_timeout=1.0)) as bridge:
        feed.wait_for_bridge()
        feed.send(event("yard", "dog", 0, "start", time.time()))
        recorder.wait_latest(f"{BASE}/yard/dog/state", "ON")
        recorder.wait_latest(f"{BASE}/yard/dog/state", "OFF")
        attributes = json.loads(recorder.latest(f"{BASE}/yard/dog/attributes"))
        assert attributes["closed_by"] == "stream_silent"
    assert bridge.counters.published > 0


def test_broker_restart_resends_everything_and_the_queued_events(
    broker: Broker, recorder: Recorder, feed: Feed
) -> None:
    bridge = MqttBridge(feed.endpoint, config(broker, queue_size=3, reconnect_max_delay=2))
    bridge.start()
    try:
        feed.wait_for_bridge()
        feed.send(status("porch", {"dog": 0.02, "doorbell": 0.1}))
        t0 = time.time()
        feed.send(event("porch", "dog", 0, "start", t0))
        recorder.wait_latest(f"{BASE}/porch/dog/state", "ON")
        # The bridge sends a state before its event: wait for the event too, or the broker
        # could stop between the two and the start would join the outage queue below.
        wait_for_event(recorder, "porch", 0, "start")

        queued = bridge.counters.queued  # 0, or 1 if the start came before the connection
        broker.stop()  # no persistence: every retained message is gone with it
        wait_until(lambda: not bridge.connected, what="the bridge to notice")
        outage = [
            event("porch", "dog", 0, "end", t0, offset=t0 + 1),
            event("porch", "doorbell", 1, "start", t0 + 2),
            event("porch", "doorbell", 1, "end", t0 + 2, offset=t0 + 3),
            event("porch", "doorbell", 2, "start", t0 + 4),
            event("porch", "doorbell", 2, "end", t0 + 4, offset=t0 + 5),
        ]
        feed.send(*outage)
        wait_until(lambda: bridge.counters.queued == queued + 5, what="the events to be queued")
        restarted = time.time()
        broker.start()

        # Discovery, current states and online again, then the newest 3 events in order.
        recorder.wait_latest(f"{BASE}/availability", "online", timeout=30)
        after = [m for m in recorder.messages if m.at >= restarted]
        topics = {m.topic for m in after}
        for group in ("dog", "doorbell"):
            assert f"homeassistant/binary_sensor/{NODE}/porch_{group}/config" in topics
            assert f"homeassistant/sensor/{NODE}/porch_{group}_score/config" in topics
        recorder.wait_latest(f"{BASE}/porch/dog/state", "OFF")
        recorder.wait_latest(f"{BASE}/porch/doorbell/state", "OFF")
        sent = wait_until(
            lambda: (
                [m.json() for m in recorder.on(f"{BASE}/porch/events") if m.at >= restarted]
                if len([m for m in recorder.on(f"{BASE}/porch/events") if m.at >= restarted]) >= 3
                else None
            ),
            what="the queued events",
        )
        assert [(e["event_id"], e["state"]) for e in sent] == [(1, "end"), (2, "start"), (2, "end")]
        assert bridge.counters.dropped == 2  # queue_size 3: the two oldest were dropped

        # And it goes on working.
        feed.send(event("porch", "doorbell", 3, "start", time.time()))
        recorder.wait_latest(f"{BASE}/porch/doorbell/state", "ON")
        wait_for_event(recorder, "porch", 3, "start")  # sent, not queued (see above)
        assert bridge.counters.connects == 2 and bridge.counters.disconnects == 1

        # Closed while the broker is away: the waiting events are counted as dropped.
        broker.stop()
        wait_until(lambda: not bridge.connected, what="the bridge to notice again")
        feed.send(event("porch", "doorbell", 3, "end", t0, offset=time.time()))
        wait_until(lambda: bridge.counters.queued == queued + 6, what="the last event queued")
    finally:
        bridge.close()
    assert bridge.counters.dropped == 3


def run_bridge_process(broker: Broker, endpoint: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "soundwatch.cli", "mqtt", "--endpoint", endpoint),
            *("--broker", broker.url, "--node", NODE),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_killed_bridge_leaves_offline_through_its_last_will(
    broker: Broker, recorder: Recorder, feed: Feed
) -> None:
    process = run_bridge_process(broker, feed.endpoint)
    try:
        feed.wait_for_bridge()
        recorder.wait_latest(f"{BASE}/availability", "online")
        feed.send(status("attic", {"dog": 0.02}))
        recorder.wait_latest(f"{BASE}/attic/dog/state", "OFF")
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        process.kill()
    will = recorder.wait_latest(f"{BASE}/availability", "offline")
    assert will.retain is False
    # The broker keeps it: a client connecting later (Home Assistant) reads offline too.
    late = Recorder(broker.port)
    try:
        retained = late.wait_latest(f"{BASE}/availability", "offline")
        assert retained.retain is True
    finally:
        late.close()


def test_bridge_command_stops_cleanly_on_sigterm(
    broker: Broker, recorder: Recorder, feed: Feed
) -> None:
    process = run_bridge_process(broker, feed.endpoint)
    try:
        feed.wait_for_bridge()
        recorder.wait_latest(f"{BASE}/availability", "online")
        feed.send(event("attic", "dog", 0, "start", time.time()))
        recorder.wait_latest(f"{BASE}/attic/dog/state", "ON")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "mqtt bridge stopped" in stderr and "dropped 0" in stderr
    recorder.wait_latest(f"{BASE}/attic/dog/state", "OFF")
    recorder.wait_latest(f"{BASE}/availability", "offline")


# -- end to end: the real pipeline replaying a file in real time -----------------------


def silence_bark_silence(shared: Callable[[str], Path], directory: Path) -> tuple[Path, float]:
    """4 s of silence, a 5 s ESC-50 dog clip (barks from 0.3 s on), 4 s of silence."""
    import soundfile

    clip = shared("audio/esc50-dev/audio/4-184575-A-0.wav")
    bark, rate = soundfile.read(clip, dtype="float32")
    quiet = np.zeros(4 * rate, np.float32)
    path = directory / "yard.wav"
    soundfile.write(path, np.concatenate([quiet, bark, quiet]), rate)
    return path, 4.0 + len(bark) / rate


def test_real_run_turns_the_dog_on_and_off_and_survives_a_broker_restart(
    broker: Broker, recorder: Recorder, shared: Callable[[str], Path], tmp_path: Path
) -> None:
    weights = shared("models/mn04_as_mAP_432.pt")
    path, sound_end = silence_bark_silence(shared, tmp_path)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    received: list = []
    done = threading.Event()
    with Subscriber(endpoint, topics=["events.", "status.", "tags."]) as subscriber:

        def read() -> None:
            while not done.is_set():
                message = subscriber.receive(timeout=0.2)
                if message is not None:
                    received.append(message)

        reader = threading.Thread(target=read)
        reader.start()
        bridge = MqttBridge(endpoint, config(broker, reconnect_max_delay=2))
        bridge.start()
        run = subprocess.Popen(
            [
                *(sys.executable, "-m", "soundwatch.cli", "run", "--source", f"yard=file:{path}"),
                *("--pace", "realtime", "--publish", endpoint, "--weights", str(weights)),
                *("--wait-for-subscribers", "6"),  # 3 topics for the bridge, 3 for the test
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        try:
            # Restart the broker while the file plays (as soon as the first scores arrive).
            wait_until(lambda: recorder.on(f"{BASE}/yard/scores"), 120, "the first scores")
            broker.stop()
            restarted = time.time()
            broker.start()
            _, stderr = run.communicate(timeout=120)
            assert run.returncode == 0, stderr
            # The final status (ended) turns everything OFF; wait until the bridge read it.
            wait_until(
                lambda: any(isinstance(m, Status) and m.ended for m in received), 20, "the end"
            )
            wait_until(lambda: bridge.counters.received >= len(received), 20, "the bridge")
        finally:
            run.kill()
            done.set()
            reader.join(10)
            bridge.close()

    tags_messages = [m for m in received if isinstance(m, Tags)]
    origin = tags_messages[0].t_start  # Unix time of the file's first sample
    dogs = [m for m in received if isinstance(m, Event) and m.label == "dog"]
    starts = [m for m in dogs if m.state == "start"]
    ends = [m for m in dogs if m.state == "end"]
    assert len(starts) == len(ends) >= 1, dogs

    # Discovery came, for every group the stream announces, again after the restart.
    groups = next(m for m in received if isinstance(m, Status)).groups
    assert "dog" in groups
    for group in groups:
        topic = f"homeassistant/binary_sensor/{NODE}/yard_{topic_safe(group)}/config"
        announced = recorder.on(topic)
        assert announced and announced[-1].at >= restarted, topic
    assert recorder.on(f"{BASE}/availability")[-1].payload == "offline"  # after close()
    assert any(
        m.at >= restarted and m.payload == "online" for m in recorder.on(f"{BASE}/availability")
    )

    # The dog's state: ON after the bark began, OFF after it ended, as the events say.
    states = [m for m in recorder.on(f"{BASE}/yard/dog/state") if m.at >= restarted]
    flips = [m for i, m in enumerate(states) if i == 0 or m.payload != states[i - 1].payload]
    on = [m for m in flips if m.payload == "ON"]
    off = [m for m in flips if m.payload == "OFF"]
    assert len(on) == len(starts), [(m.payload, m.at - origin) for m in states]
    for start, end, went_on in zip(starts, ends, on, strict=True):
        went_off = next(m for m in off if m.at > went_on.at)
        assert went_on.at >= start.t_pub - 0.05 and went_off.at >= end.t_pub - 0.05
        assert went_on.at > origin + 4.0  # never before the dog barked
        print(
            f"dog event {start.event_id}: onset {start.onset - origin:.2f} s, offset "
            f"{end.offset - origin:.2f} s into the file; MQTT ON {went_on.at - origin:.2f} s, "
            f"OFF {went_off.at - origin:.2f} s; bridge delay (ZeroMQ publish to MQTT "
            f"subscriber) {1000 * (went_on.at - start.t_pub):.1f} ms, "
            f"{1000 * (went_off.at - end.t_pub):.1f} ms"
        )
    assert starts[0].onset - origin == pytest.approx(4.3, abs=1.0)  # the first bark at 4.3 s
    assert off[-1].at > origin + sound_end - 0.5  # the last OFF once the barking is over
    final = json.loads(recorder.latest(f"{BASE}/yard/dog/attributes"))
    assert (final["event_id"], final["onset"], final["offset"]) == (
        ends[-1].event_id,
        ends[-1].onset,
        ends[-1].offset,
    )
    # The events topic carried every dog event of the run (none lost to the restart).
    mqtt_events = [m.json() for m in recorder.on(f"{BASE}/yard/events")]
    assert [(e["event_id"], e["state"]) for e in mqtt_events if e["label"] == "dog"] == [
        (m.event_id, m.state) for m in dogs
    ]
    # Nothing stays ON; scores came at most once a second.
    for topic in {m.topic for m in recorder.messages if m.topic.endswith("/state")}:
        if topic.startswith(f"{BASE}/yard/"):
            assert recorder.latest(topic) == "OFF", topic
    scores = [m.json()["t_end"] for m in recorder.on(f"{BASE}/yard/scores")]
    assert len(scores) >= 5 and (np.diff(scores) > 0.8).all(), scores
    counters = bridge.counters
    assert (counters.connects, counters.disconnects) == (2, 1)  # the restart was noticed
    assert counters.dropped == 0 and counters.missed == 0 and counters.malformed == 0


def test_tls_with_user_and_password(tmp_path: Path, feed: Feed, caplog) -> None:
    """mqtts:// with a percent-encoded password against a TLS broker that requires a
    login: it works with the right CA and login; a wrong password is reported clearly."""
    openssl = require_executable("openssl")
    passwd = require_executable("mosquitto_passwd")
    cert, key, passwords = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "passwords"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run([passwd, "-b", "-c", str(passwords), "bridge", "p@ss:word"], check=True)
    settings = f"certfile {cert}\nkeyfile {key}\npassword_file {passwords}\nallow_anonymous false\n"
    server = Broker(require_executable("mosquitto"), tmp_path, settings)
    server.start()
    watcher = Recorder(server.port, ca=cert, login=("bridge", "p@ss:word"))
    url = f"mqtts://bridge:p%40ss%3Aword@127.0.0.1:{server.port}"
    try:
        with MqttBridge(feed.endpoint, MqttConfig(broker=url, node=NODE, tls={"ca_certs": cert})):
            feed.wait_for_bridge()
            watcher.wait_latest(f"{BASE}/availability", "online")
            feed.send(event("cellar", "dog", 0, "start", time.time()))
            watcher.wait_latest(f"{BASE}/cellar/dog/state", "ON")
        watcher.wait_latest(f"{BASE}/cellar/dog/state", "OFF")
        wrong = url.replace("p%40ss", "guess")
        refused = MqttBridge(feed.endpoint, MqttConfig(broker=wrong, tls={"ca_certs": cert}))
        refused.start()
        try:
            wait_until(
                lambda: "check USER:PASS in the broker URL" in caplog.text, what="the refusal"
            )
            assert not refused.connected
        finally:
            refused.close(timeout=1)
    finally:
        watcher.close()
        server.stop()

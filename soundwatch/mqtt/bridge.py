"""The MQTT bridge: soundwatch's ZeroMQ messages in, Home Assistant-ready MQTT out.

Two threads: paho's network loop (connects, reconnects with capped exponential backoff,
delivers Home Assistant's birth message) and the bridge's worker, which owns the ZeroMQ
subscriber, the state of every stream and every publish. The network loop only raises
flags; the worker acts on them, so the state needs no lock.

Retained state (discovery, ON/OFF, attributes, availability) is published with QoS 0 and
re-sent whole after every (re)connect, so a message lost with a dying connection is
repaired and an old one can never be replayed over a newer one. Event messages use QoS 1;
while the broker is away they wait in a bounded queue (oldest dropped and counted).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from soundwatch.client import CurveClient, Subscriber, subscribe_endpoints
from soundwatch.errors import SoundwatchError
from soundwatch.mqtt.config import MqttConfig
from soundwatch.mqtt.control import ControlLink
from soundwatch.mqtt.discovery import (
    OFF,
    OFFLINE,
    ON,
    ONLINE,
    Topics,
    discovery_messages,
    event_attributes,
)
from soundwatch.sinks.messages import Envelope, Event, Status, Tags
from soundwatch.sinks.publisher import to_json

log = logging.getLogger("soundwatch.mqtt")

SUBSCRIBED = ["events.", "status.", "tags."]
SCORES_INTERVAL = 1.0  # seconds: at most one scores message per stream per second
_POLL = 0.1  # seconds the worker waits for a ZeroMQ message before looking at its flags
_DRAIN = 1.0  # seconds close() spends at most on messages still arriving
PAHO_IN_FLIGHT = 100  # QoS 1 messages awaiting the broker's acknowledgement, beyond the queue


@dataclass
class BridgeCounters:
    """What the bridge did; every message it could not deliver is counted here."""

    received: int = 0  # ZeroMQ messages read
    published: int = 0  # MQTT messages handed to the client while connected
    queued: int = 0  # events that waited in the outage queue
    dropped: int = 0  # events dropped because the outage queue was full
    scores_dropped: int = 0  # scores messages not sent because the broker was away
    connects: int = 0
    disconnects: int = 0  # connections lost (not counting the clean one at close())
    stale_cleared: int = 0  # retained ON states of an earlier run turned OFF
    malformed: int = 0  # ZeroMQ messages that were not soundwatch messages
    missed: int = 0  # ZeroMQ messages lost before reaching the bridge (seq gaps)
    control_commands: int = 0  # MQTT control commands received
    control_rejected: int = 0  # of which refused (published on .../control/result)


@dataclass
class _Stream:
    """What the bridge knows of one soundwatch stream."""

    name: str
    model: str = ""
    groups: dict[str, float | None] = field(default_factory=dict)  # name -> threshold_on
    announced: set[str] = field(default_factory=set)  # discovery sent on this connection
    open: dict[str, Event] = field(default_factory=dict)  # group -> its ongoing event
    attributes: dict[str, dict] = field(default_factory=dict)  # group -> last attributes
    last_seen: float = 0.0  # monotonic time of its last message
    last_scores: float = float("-inf")


class MqttBridge:
    """Subscribe to soundwatch endpoints and publish states, events, scores and discovery.

    ``start()`` returns at once (the broker may come later: it is retried with backoff);
    ``close()`` turns every state OFF, says ``offline`` and disconnects cleanly.
    """

    def __init__(
        self,
        endpoints: list[str] | str,
        config: MqttConfig,
        curve: CurveClient | None = None,
        control: str | None = None,
        control_poll: float = 5.0,
    ) -> None:
        if config.broker is None:
            raise SoundwatchError(
                "no MQTT broker given: pass --broker mqtt://HOST[:PORT] (or set mqtt.broker)"
            )
        self.endpoints = subscribe_endpoints(endpoints)
        self.config = config
        self.curve = curve  # CURVE keys for the ZeroMQ side, if the publisher uses CURVE
        self.address = config.address
        self.topics = Topics(config.prefix, config.node_id)
        self.counters = BridgeCounters()
        self.failed: BaseException | None = None  # what stopped the worker, if anything
        self._streams: dict[str, _Stream] = {}
        self._outage: deque[tuple[str, str]] = deque()
        self._connected = threading.Event()
        self._resync = threading.Event()  # (re)connected or HA restarted: send everything
        self._stop = threading.Event()
        self._stale: queue.SimpleQueue[str] = queue.SimpleQueue()  # retained ON topics
        self._worker: threading.Thread | None = None
        self._closed = False
        self._unreachable = False  # the last connection attempt failed (logged once)
        self._client = self._make_client()
        # Command topics (enable a group, set its threshold), sent on to a control endpoint.
        self.control = ControlLink(
            self._client, self.topics, config.discovery_prefix, control, control_poll, curve=curve
        )
        self._control_wanted = control is not None
        self.clip_base = config.clip_url  # the dashboard serving clips, if any

    def set_control(self, endpoint: str, curve: CurveClient | None = None) -> None:
        """Offer the command topics of the run's control endpoint (in-process, once bound;
        ``curve``: the keys it takes when it uses CURVE)."""
        self._control_wanted = True
        self.control.set_endpoint(endpoint, curve)
        if self._connected.is_set():
            self.control.connected(self._client)

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"soundwatch-{self.topics.node}-{os.getpid()}",
            clean_session=True,
        )
        address = self.address
        if address.username is not None:
            client.username_pw_set(address.username, address.password)
        if address.tls:
            tls = self.config.tls
            client.tls_set(
                ca_certs=str(tls.ca_certs) if tls.ca_certs else None,
                certfile=str(tls.certfile) if tls.certfile else None,
                keyfile=str(tls.keyfile) if tls.keyfile else None,
            )
            client.tls_insecure_set(tls.insecure)
        client.will_set(self.topics.availability, OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(1, self.config.reconnect_max_delay)
        # paho holds QoS 1 messages until the broker acknowledges them: room for the outage
        # queue flushed at once plus those in flight, so a burst of acknowledgements still
        # on its way never makes paho refuse the next event.
        client.max_queued_messages_set(self.config.queue_size + PAHO_IN_FLIGHT)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (retrying) and start bridging."""
        log.info(
            "bridging %s to mqtt%s://%s:%d as node %r",
            ", ".join(self.endpoints),
            "s" if self.address.tls else "",
            self.address.host,
            self.address.port,
            self.topics.node,
        )
        self._client.connect_async(self.address.host, self.address.port, self.config.keepalive)
        self._client.loop_start()
        self.control.start()
        self._worker = threading.Thread(target=self._run, name="mqtt-bridge", daemon=True)
        self._worker.start()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def running(self) -> bool:
        """The worker is alive (False after close() or when it failed: see ``failed``)."""
        return self._worker is not None and self._worker.is_alive()

    def close(self, timeout: float = 5.0) -> None:
        """Handle the messages already on their way (up to a second), turn every state OFF,
        publish ``offline`` and disconnect cleanly (so the broker does not send the will).
        Closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self.control.close()
        self.counters.control_commands = self.control.commands
        self.counters.control_rejected = self.control.rejected
        if self._worker is not None:
            self._worker.join(timeout)
            if self._worker.is_alive():
                log.warning("the mqtt bridge worker did not stop within %.0f s", timeout)
        if self._connected.is_set():
            self._resync.clear()  # shutting down: only the final states matter now
            while self._outage and self._send(*self._outage[0], qos=1):
                self._outage.popleft()
            for stream in self._streams.values():
                self._close_open(stream, "shutdown")
            last = self._client.publish(self.topics.availability, OFFLINE, qos=1, retain=True)
            try:  # QoS 1 acknowledged: everything sent before it arrived too (one connection)
                last.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as error:
                log.warning("could not deliver the final states: %s", error)
            if not last.is_published():
                log.warning("the broker did not acknowledge the final states in %.0f s", timeout)
        elif self.counters.connects == 0:
            log.warning("closing without ever reaching the broker: nothing was published")
        else:
            log.warning(
                "closing while the broker is away: states stay as the broker has them; the "
                "broker's last will said offline and the next start turns them OFF"
            )
        if self._outage:  # the broker is away: these events are lost
            log.warning("%d queued events could not be sent", len(self._outage))
            self.counters.dropped += len(self._outage)
            self._outage.clear()
        self._client.disconnect()
        self._client.loop_stop()
        log.info("mqtt bridge closed: %s", asdict(self.counters))

    def __enter__(self) -> MqttBridge:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paho's network thread: only flags -------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            hint = ""
            if str(reason_code) in ("Not authorized", "Bad user name or password"):
                hint = "; check USER:PASS in the broker URL"
            log.error(
                "broker %s refused the connection: %s%s", self.address.host, reason_code, hint
            )
            return
        self.counters.connects += 1
        self._unreachable = False
        log.info("connected to %s:%d", self.address.host, self.address.port)
        client.subscribe(
            [(f"{self.config.discovery_prefix}/status", 1), (self.topics.all_states, 1)]
        )
        self._connected.set()
        self._resync.set()
        if self._control_wanted:
            self.control.connected(client)

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        level = logging.DEBUG if self._unreachable else logging.WARNING
        self._unreachable = True
        log.log(
            level,
            "cannot reach the broker at %s:%d; retrying (backoff up to %d s)",
            self.address.host,
            self.address.port,
            self.config.reconnect_max_delay,
        )

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not self._connected.is_set():
            return
        self._connected.clear()
        self.control.disconnected()
        if not self._stop.is_set():  # not our own disconnect at close()
            self.counters.disconnects += 1
            log.warning("lost the broker (%s); reconnecting with backoff", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        payload = message.payload.decode("utf-8", "replace")
        if self.control.offer(message.topic, payload, message.retain):
            return
        if message.topic == f"{self.config.discovery_prefix}/status":
            # A retained birth message comes with our own subscription, right after we
            # sent everything; a live one means Home Assistant (re)started.
            if payload == ONLINE and not message.retain:
                log.info("Home Assistant came online: sending discovery again")
                self._resync.set()
        elif message.retain and payload == ON:  # a state left ON on the broker
            self._stale.put(message.topic)

    # -- the worker: all state and all publishing ------------------------------------------

    def _run(self) -> None:
        try:
            with Subscriber(self.endpoints, topics=SUBSCRIBED, curve=self.curve) as subscriber:
                while not self._stop.is_set():
                    self._housekeeping()
                    self._take(subscriber)
                # Closing: take what is already on its way (the last events and the final
                # status of a pipeline stopping at the same time), for a bounded time.
                deadline = time.monotonic() + _DRAIN
                while time.monotonic() < deadline and self._take(subscriber):
                    pass
        except Exception as error:  # reported by the command; the bridge cannot go on
            log.exception("mqtt bridge stopped")
            self.failed = error

    def _take(self, subscriber: Subscriber) -> bool:
        """Handle the next ZeroMQ message, if one comes within ``_POLL`` seconds."""
        message = subscriber.receive(timeout=_POLL)
        if message is not None:
            self.counters.received += 1
            self._handle(message)
        self.counters.malformed = subscriber.malformed
        self.counters.missed = subscriber.gaps
        return message is not None

    def _housekeeping(self) -> None:
        if self._connected.is_set() and self._resync.is_set():
            self._resync.clear()
            self._send_everything()
        elif self._outage and self._online():  # paho refused one while connected: retry now
            self._flush_outage()
        while True:
            try:
                topic = self._stale.get_nowait()
            except queue.Empty:
                break
            if topic not in self._on_topics() and self._online():
                self._send(topic, OFF, retain=True)
                self.counters.stale_cleared += 1
        now = time.monotonic()
        for stream in self._streams.values():
            if stream.open and now - stream.last_seen > self.config.stream_timeout:
                log.warning(
                    "no message from stream %s for %.0f s: its states turn OFF",
                    stream.name,
                    now - stream.last_seen,
                )
                self._close_open(stream, "stream_silent")

    def _handle(self, message: Envelope) -> None:
        stream = self._streams.get(message.stream)
        if stream is None:
            stream = self._streams[message.stream] = _Stream(message.stream)
        stream.last_seen = time.monotonic()
        if isinstance(message, Event):
            self._handle_event(stream, message)
        elif isinstance(message, Tags):
            self._add_groups(stream, dict.fromkeys(message.groups))
            self._send_scores(stream, message)
        elif isinstance(message, Status):
            if message.model != stream.model:
                stream.model = message.model
                stream.announced.clear()  # the device's model changed: announce again
            self._add_groups(stream, message.groups)
            if message.ended:
                self._close_open(stream, "stream_end")

    def _handle_event(self, stream: _Stream, event: Event) -> None:
        group = event.label
        if event.state == "start":
            stream.open[group] = event
            attributes = event_attributes(event.event_id, event.onset, None, event.peak, None)
            state = ON
        else:
            stream.open.pop(group, None)
            attributes = event_attributes(
                event.event_id, event.onset, event.offset, event.peak, "event"
            )
            state = OFF
        stream.attributes[group] = attributes
        self._add_groups(stream, {group: None})  # a group first seen now: no OFF before ON
        self._send_state(stream, group, state)
        self._send_event(self.topics.events(stream.name), json.dumps(self._event_json(event)))

    def _event_json(self, event: Event) -> dict:
        """The event as JSON; an ended event recorded in the history also names its clip's
        address on the dashboard (which answers 404 with the reason when there is none)."""
        body = to_json(event)
        if event.record_id >= 0 and event.state == "end" and self.clip_base:
            body["clip_url"] = f"{self.clip_base}clips/{event.record_id}"
        return body

    def _add_groups(self, stream: _Stream, groups: dict[str, float | None]) -> None:
        """Learn groups (from status, tags or events) and announce the new ones."""
        for name, threshold in groups.items():
            if threshold is not None or name not in stream.groups:
                stream.groups[name] = threshold
        if not self._online():
            return  # announced with everything else after (re)connecting
        for name in stream.groups:
            if name not in stream.announced:
                self._announce(stream, name)
                if name not in stream.open and name not in stream.attributes:
                    self._send(self.topics.state(stream.name, name), OFF, retain=True)

    def _announce(self, stream: _Stream, group: str) -> None:
        for topic, payload in discovery_messages(
            self.topics, self.config.discovery_prefix, stream.name, group, stream.model
        ):
            self._send(topic, payload, retain=True)
        stream.announced.add(group)

    def _send_state(self, stream: _Stream, group: str, state: str) -> None:
        """A group's attributes, then its state (so automations read fresh attributes)."""
        if not self._online():
            return  # the current state is sent after reconnecting
        attributes = stream.attributes.get(group)
        if attributes is not None:
            self._send(
                self.topics.attributes(stream.name, group), json.dumps(attributes), retain=True
            )
        self._send(self.topics.state(stream.name, group), state, retain=True)

    def _close_open(self, stream: _Stream, reason: str) -> None:
        """Turn OFF every group of the stream with an event going on."""
        for group, event in list(stream.open.items()):
            del stream.open[group]
            stream.attributes[group] = event_attributes(
                event.event_id, event.onset, None, event.peak, reason
            )
            self._send_state(stream, group, OFF)

    def _send_scores(self, stream: _Stream, tags: Tags) -> None:
        now = time.monotonic()
        if not tags.groups or now - stream.last_scores < SCORES_INTERVAL:
            return
        stream.last_scores = now
        body = {
            "t_end": tags.t_end,
            "groups": {name: round(float(score), 4) for name, score in tags.groups.items()},
        }
        if not (self._online() and self._send(self.topics.scores(stream.name), json.dumps(body))):
            self.counters.scores_dropped += 1

    def _send_everything(self) -> None:
        """After a (re)connect or a Home Assistant restart: discovery, states, then online,
        then the events that waited."""
        for stream in self._streams.values():
            stream.announced.clear()
            for group in stream.groups:
                self._announce(stream, group)
                self._send_state(stream, group, ON if group in stream.open else OFF)
        self._send(self.topics.availability, ONLINE, retain=True)
        self._flush_outage()

    def _flush_outage(self) -> None:
        """Send the events that waited, oldest first, while the broker takes them."""
        while self._outage and self._online():
            topic, payload = self._outage[0]
            if not self._send(topic, payload, qos=1):
                break
            self._outage.popleft()

    def _send_event(self, topic: str, payload: str) -> None:
        if self._online() and not self._outage and self._send(topic, payload, qos=1):
            return
        if len(self._outage) >= self.config.queue_size:
            self._outage.popleft()
            self.counters.dropped += 1
        self._outage.append((topic, payload))
        self.counters.queued += 1

    def _send(self, topic: str, payload: str, retain: bool = False, qos: int = 0) -> bool:
        """Hand one message to paho; False if it was not taken."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        # QoS 1 and no connection: paho keeps the message and sends it after reconnecting.
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (
            qos > 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN
        ):
            self.counters.published += 1
            return True
        return False

    def _online(self) -> bool:
        return self._connected.is_set() and not self._resync.is_set()

    def _on_topics(self) -> set[str]:
        return {
            self.topics.state(stream.name, group)
            for stream in self._streams.values()
            for group in stream.open
        }

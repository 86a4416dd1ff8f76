"""Publishing: number messages per topic, encode once, hand them to every output.

Outputs are a ZeroMQ PUB socket (one per endpoint: tcp or ipc) and an optional JSON-lines
writer. A PUB socket never blocks the pipeline: each subscriber has a bounded queue (the
high-water mark) and ZeroMQ drops that subscriber's messages when it is full, which the
subscriber sees as gaps in ``seq``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import IO, Protocol

import numpy as np
import zmq

from soundwatch.errors import SoundwatchError
from soundwatch.security.curve import CurveServer, ServerGuard, is_loopback_endpoint
from soundwatch.sinks.messages import SCHEMA_VERSION, Embedding, Envelope, Mel, Tags, encode

log = logging.getLogger(__name__)


class Output(Protocol):
    """Somewhere published messages go."""

    def send(self, message: Envelope, topic: bytes, payload: bytes) -> None: ...

    def wants(self, prefix: bytes) -> bool:
        """Whether a reader asked for topics starting with ``prefix`` explicitly."""
        ...

    def close(self) -> None: ...


class ZmqOutput:
    """A ZeroMQ publisher socket bound to one or more endpoints.

    It is an XPUB socket: it behaves as PUB for subscribers and also tells us when they
    subscribe and unsubscribe, so a run can wait for its consumers before the first message
    (:meth:`wait_for_subscribers`) instead of publishing into the void, and publish costly
    optional topics (``mel.``) only while somebody asked for them (:meth:`wants`).
    """

    def __init__(
        self,
        endpoints: list[str],
        high_water_mark: int = 1000,
        context: zmq.Context | None = None,
        curve: CurveServer | None = None,
    ) -> None:
        # CURVE authenticates through ZAP, one handler per context: such a socket gets its own.
        self._owned_context = zmq.Context() if curve is not None and context is None else None
        self._context = self._owned_context or context or zmq.Context.instance()
        self.socket = self._context.socket(zmq.XPUB)
        self.guard: ServerGuard | None = None
        if curve is not None:
            self.guard = curve.secure(self.socket, f"publisher {', '.join(endpoints)}")
        self.subscriptions = 0
        self.topics: Counter[bytes] = Counter()  # live subscriptions per topic prefix
        self.socket.setsockopt(zmq.SNDHWM, high_water_mark)
        # Report every subscription and unsubscription, not only the first and last per topic.
        self.socket.setsockopt(zmq.XPUB_VERBOSER, 1)
        self.socket.setsockopt(zmq.LINGER, 500)  # ms to flush the last messages on close
        self.endpoints: list[str] = []
        for endpoint in endpoints:
            if curve is None and not is_loopback_endpoint(endpoint):
                log.warning(
                    "publishing on %s without CURVE: anyone on the network can subscribe and "
                    "read what the microphones hear; see docs/reliability.md (--curve-secret, "
                    "--curve-allow)",
                    endpoint,
                )
            try:
                self.socket.bind(endpoint)
            except zmq.ZMQError as error:
                self.close(linger=0)
                hint = (
                    "another process (maybe another soundwatch run) uses it; pick another "
                    "port with --publish"
                    if error.errno == zmq.EADDRINUSE
                    else "check the address"
                )
                raise SoundwatchError(
                    f"cannot publish on {endpoint}: {error.strerror}; {hint}"
                ) from None
            # tcp://*:0 binds a random port: report the real one.
            self.endpoints.append(self.socket.getsockopt_string(zmq.LAST_ENDPOINT))
        if self.guard is not None:
            self.guard.refusals.where = f"publisher on {', '.join(self.endpoints)}"

    def wait_for_subscribers(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` subscriptions (one per topic prefix a subscriber asks for)
        arrived (True) or ``timeout`` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        while self.subscriptions < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.socket.poll(int(remaining * 1000), zmq.POLLIN):
                return False
            self._read_subscriptions()
        return True

    def _read_subscriptions(self) -> None:
        while True:
            try:
                frame = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if frame[:1] == b"\x01":
                self.subscriptions += 1
                self.topics[frame[1:]] += 1
            elif frame[:1] == b"\x00":
                self.subscriptions = max(0, self.subscriptions - 1)
                self.topics[frame[1:]] -= 1
                if self.topics[frame[1:]] <= 0:
                    del self.topics[frame[1:]]

    def wants(self, prefix: bytes) -> bool:
        self._read_subscriptions()
        return any(topic.startswith(prefix) for topic in self.topics)

    def send(self, message: Envelope, topic: bytes, payload: bytes) -> None:
        # Publisher sockets drop (never block) when a subscriber's queue is full.
        self.socket.send_multipart([topic, payload], flags=zmq.NOBLOCK)
        self._read_subscriptions()  # keep the subscription queue drained

    def close(self, linger: int | None = None) -> None:
        self.socket.close(linger=linger)
        if self.guard is not None:
            self.guard.close()
        if self._owned_context is not None:
            self._owned_context.term()  # waits (up to the linger) for the last messages


class JsonLinesOutput:
    """One JSON object per line (probabilities as a list), for consumers without ZeroMQ."""

    def __init__(self, target: str) -> None:
        self._owns = target != "-"
        try:
            self._file: IO[str] = (
                open(Path(target), "a", encoding="utf-8", buffering=1)  # noqa: SIM115
                if self._owns
                else sys.stdout
            )
        except OSError as error:
            raise SoundwatchError(
                f"cannot open JSON-lines output {target}: {error.strerror}"
            ) from None

    def send(self, message: Envelope, topic: bytes, payload: bytes) -> None:
        try:
            self._file.write(json.dumps(to_json(message), separators=(",", ":")) + "\n")
            self._file.flush()
        except BrokenPipeError:
            raise SoundwatchError(
                "the JSON-lines output was closed by its reader (broken pipe); stopping"
            ) from None

    def wants(self, prefix: bytes) -> bool:
        return False  # a file takes everything published, and asks for nothing more

    def close(self) -> None:
        if self._owns:
            # The reader went away: send() already reported it; nothing more can be written.
            with contextlib.suppress(BrokenPipeError):
                self._file.close()


def to_json(message: Envelope) -> dict:
    """A message as a JSON-ready dict (the msgpack fields, probs as a list of floats)."""
    body = {"v": SCHEMA_VERSION, "kind": message.kind, **message.__dict__}
    if isinstance(message, Tags):
        body["probs"] = _rounded(message.probs)
        body["smoothed"] = _rounded(message.smoothed)
        body["top"] = [[label, round(float(p), 6)] for label, p in message.top]
        body["groups"] = {name: round(float(s), 6) for name, s in message.groups.items()}
    elif isinstance(message, Mel):
        body["frames"] = np.asarray(message.frames, dtype=np.uint8).tolist()
    elif isinstance(message, Embedding):
        body["embedding"] = _rounded(message.embedding)
    return body


def _rounded(values: np.ndarray) -> list[float]:
    return np.round(np.asarray(values, dtype=np.float64), 6).tolist()


class Publisher:
    """Assigns contiguous per-topic sequence numbers and fans messages out to outputs.

    Used from one thread only (ZeroMQ sockets are not thread-safe).
    """

    def __init__(self, outputs: list[Output]) -> None:
        self.outputs = outputs
        self._next_seq: dict[str, int] = defaultdict(int)

    def publish(self, message: Envelope) -> None:
        topic = message.topic
        message.seq = self._next_seq[topic]
        self._next_seq[topic] += 1
        message.t_pub = time.time()
        topic_bytes, payload = encode(message)
        for output in self.outputs:
            output.send(message, topic_bytes, payload)

    def wants(self, prefix: str) -> bool:
        """Whether any output's readers asked for topics starting with ``prefix``."""
        return any(output.wants(prefix.encode()) for output in self.outputs)

    def close(self) -> None:
        for output in self.outputs:
            output.close()

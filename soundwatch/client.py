"""Subscribe to a running soundwatch: decoded messages with gap detection.

    from soundwatch.client import Subscriber

    with Subscriber("tcp://127.0.0.1:5557", topics=["tags."]) as sub:
        for message in sub:
            print(message.stream, message.top[:3], sub.gaps)

With CURVE (``soundwatch run --curve-secret ... --curve-allow DIR``), pass this client's
keys: ``Subscriber(endpoint, curve=CurveClient("me.key_secret", "server.key"))``.

Probabilities arrive as numpy float32 arrays. A gap in a topic's ``seq`` (messages this
subscriber missed, for example because it read too slowly and ZeroMQ dropped them at the
high-water mark) is counted in :attr:`Subscriber.missed` per topic.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from types import TracebackType

import zmq

from soundwatch.endpoints import check_endpoint
from soundwatch.errors import SoundwatchError
from soundwatch.security.curve import CurveClient, client_monitor
from soundwatch.sinks.messages import MAX_PAYLOAD, Envelope, MalformedMessage, decode

__all__ = ["CurveClient", "MalformedMessage", "Subscriber", "decode"]


def subscribe_endpoints(endpoints: str | list[str]) -> list[str]:
    """The endpoints as a list, each checked as a connect address: a typo is one line
    naming it (:class:`SoundwatchError`), not ZeroMQ's silence (``tcp://:5557``) or EINVAL."""
    endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    for endpoint in endpoints:
        try:
            check_endpoint(endpoint, connect=True)
        except ValueError as error:
            raise SoundwatchError(f"cannot subscribe: {error}") from None
    return endpoints


class Subscriber:
    """A ZeroMQ SUB socket connected to one or more soundwatch endpoints."""

    def __init__(
        self,
        endpoints: str | list[str] = "tcp://127.0.0.1:5557",
        topics: list[str] | None = None,
        high_water_mark: int = 1000,
        context: zmq.Context | None = None,
        curve: CurveClient | None = None,
    ) -> None:
        endpoints = subscribe_endpoints(endpoints)
        self._context = context or zmq.Context.instance()
        self.socket = self._context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.RCVHWM, high_water_mark)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_PAYLOAD)  # a bigger frame drops the peer
        self._monitor = None
        if curve is not None:
            curve.secure(self.socket)
            # A refused key or a wrong server key shows up only as silence: say why.
            self._monitor, self._refusals = client_monitor(
                self.socket, f"subscriber of {', '.join(endpoints)}"
            )
        for endpoint in endpoints:
            self.socket.connect(endpoint)
        for topic in topics or [""]:
            self.socket.setsockopt_string(zmq.SUBSCRIBE, topic)
        self._last_seq: dict[str, int] = {}
        self.missed: dict[str, int] = defaultdict(int)
        self.malformed = 0
        self.received = 0

    def receive(self, timeout: float | None = None) -> Envelope | None:
        """The next well-formed message, or ``None`` after ``timeout`` seconds.

        Malformed messages are counted in :attr:`malformed` and skipped.
        """
        deadline_ms = None if timeout is None else int(timeout * 1000)
        while True:
            if not self.socket.poll(deadline_ms):
                return None
            parts = self.socket.recv_multipart()
            if len(parts) != 2:
                self.malformed += 1
                continue
            try:
                message = decode(parts[0], parts[1])
            except MalformedMessage:
                self.malformed += 1
                continue
            self._track(message)
            return message

    def _track(self, message: Envelope) -> None:
        self.received += 1
        last = self._last_seq.get(message.topic)
        if last is not None and message.seq > last + 1:
            self.missed[message.topic] += message.seq - last - 1
        # seq <= last: the publisher restarted and numbers from 0 again; nothing was missed.
        self._last_seq[message.topic] = message.seq

    @property
    def gaps(self) -> int:
        """Messages missed so far, over all topics."""
        return sum(self.missed.values())

    def __iter__(self) -> Iterator[Envelope]:
        while True:
            message = self.receive()
            if message is not None:
                yield message

    @property
    def refused(self) -> dict[str, int]:
        """Failed CURVE handshakes by kind (``unknown_key``: the server does not allow this
        client; ``bad_handshake``: wrong server key; ``plaintext``: the server has no CURVE)."""
        return dict(self._refusals.counts) if self._monitor is not None else {}

    def close(self) -> None:
        self.socket.close(linger=0)
        if self._monitor is not None:
            self._monitor.stop()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

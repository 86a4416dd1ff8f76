"""The wire protocol over real ZeroMQ sockets on loopback: round trips, contiguous
sequence numbers, malformed input rejected with a clear reason (table-driven), and a
subscriber that never reads does not slow the publisher or another subscriber."""

from __future__ import annotations

import json
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from soundwatch.client import Subscriber
from soundwatch.sinks.messages import (
    SCHEMA_VERSION,
    Embedding,
    Event,
    MalformedMessage,
    Status,
    Tags,
    decode,
    encode,
)
from soundwatch.sinks.publisher import Publisher, ZmqOutput, to_json


def make_tags(stream: str = "kitchen", n: int = 527) -> Tags:
    probs = np.linspace(0, 1, n, dtype=np.float32)
    return Tags(stream=stream, t_start=1.0, t_end=4.0, probs=probs, top=[("Speech", 0.9)])


def test_round_trip_all_kinds() -> None:
    messages = [
        make_tags(),
        Status(stream="s", t_start=0.0, t_end=1.0, model="mn04", labels=["a"], counters={"x": 1}),
        Event(stream="s", t_start=2.0, t_end=3.0, label="Dog", onset=2.0, offset=3.0, peak=0.7),
        Embedding(
            stream="s", t_start=1.0, t_end=4.0, embedding=np.linspace(-2, 3, 960, dtype="f4")
        ),
    ]
    for message in messages:
        message.seq, message.t_pub = 7, 123.0
        topic, payload = encode(message)
        assert topic == f"{message.kind}.{message.stream}".encode()
        back = decode(topic, payload)
        assert type(back) is type(message)
        for name, value in vars(message).items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(getattr(back, name), value)
            else:
                assert getattr(back, name) == value, name


def test_embedding_as_json_lines_is_a_list_of_floats() -> None:
    message = Embedding(stream="s", t_start=1.0, t_end=4.0, embedding=np.array([0.5, -1.25], "f4"))
    body = json.loads(json.dumps(to_json(message)))
    assert body["kind"] == "embeddings" and body["embedding"] == [0.5, -1.25]


def packed(**fields: object) -> bytes:
    body = {
        "v": SCHEMA_VERSION,
        "kind": "tags",
        "stream": "s",
        "seq": 0,
        "t_start": 0.0,
        "t_end": 1.0,
        "t_pub": 1.0,
        "probs": np.zeros(3, "<f4").tobytes(),
        "top": [],
    }
    body.update(fields)
    return msgpack.packb({k: v for k, v in body.items() if v is not None}, use_bin_type=True)


# The fields of each kind besides the envelope (``packed`` drops tags' probs/top for them).
EVENT = {"probs": None, "top": None, "event_id": 1, "label": "dog", "state": "start",
         "onset": 0.0, "offset": 1.0, "peak": 0.5}  # fmt: skip
STATUS = {"probs": None, "top": None, "model": "mn04", "labels": [], "labels_sha256": "",
          "window": 3.0, "hop": 0.5, "source": {}, "counters": {}, "latency": {}}  # fmt: skip
MEL = {"probs": None, "top": None, "frames": b"\x00" * 8, "bins": 4, "frame_rate": 100.0,
       "lo": -1.5, "hi": 3.0}  # fmt: skip
EMB = {"probs": None, "top": None, "embedding": np.ones(4, "<f4").tobytes()}

MALFORMED = [
    # (topic, payload, what the error must say)
    (b"tags.s", b"\xc1garbage", "not msgpack"),
    (b"tags.s", msgpack.packb([1, 2]), "not a map"),
    (b"tags.s", packed(v=99), "schema version 99"),
    (b"tags.s", packed(kind="weather"), "unknown message kind 'weather'"),
    (b"tags.s", packed(seq=None), "lacks fields ['seq']"),
    (b"tags.s", packed(probs=b"\x00\x01\x02"), "probs is not float32 bytes"),
    (b"tags.other", packed(), "does not match its payload"),
    (b"tags.s", packed(top=[1, 2]), "top is not a list of"),
    (b"tags.s", packed(top=[["Speech", "high"]]), "top is not a list of"),
    (b"tags.s", packed(t_end="soon"), "field 't_end' has type str"),
    (b"tags.s", packed(seq=True), "field 'seq' has type bool"),
    (b"tags.s", packed(stream=7), "field 'stream' has type int"),
    (b"tags.s", packed(smoothed=b"\x00" * 8), "smoothed and probs differ in length"),
    (b"tags.s", packed(smoothed="high"), "smoothed is not float32 bytes"),
    (b"tags.s", packed(groups={"dog": "on"}), "groups is not name -> number"),
    (b"events.s", packed(kind="events", **{**EVENT, "state": "paused"}), "unknown state"),
    (
        b"events.s",
        packed(kind="events", **{**EVENT, "offset": "later"}),
        "field 'offset' has type str",
    ),
    (
        b"status.s",
        packed(kind="status", **{**STATUS, "counters": {"x": "1"}}),
        "counters not numbers",
    ),
    (
        b"status.s",
        packed(kind="status", **{**STATUS, "latency": {"p50": None}}),
        "latency not numbers",
    ),
    (b"status.s", packed(kind="status", **{**STATUS, "ended": 1}), "field 'ended' has type int"),
    (b"mel.s", packed(kind="mel", **{**MEL, "frames": b"\x00" * 5}), "whole rows of 4 bins"),
    (b"mel.s", packed(kind="mel", **{**MEL, "bins": 0}), "whole rows of 0 bins"),
    (b"mel.s", packed(kind="mel", **{**MEL, "lo": "dark"}), "field 'lo' has type str"),
    (
        b"embeddings.s",
        packed(kind="embeddings", **{**EMB, "embedding": None}),
        "lacks fields ['embedding']",
    ),
    (
        b"embeddings.s",
        packed(kind="embeddings", **{**EMB, "embedding": b"\x00" * 5}),
        "embeddings message on topic b'embeddings.s': embedding is not float32 bytes",
    ),
    (
        b"embeddings.s",
        packed(kind="embeddings", **{**EMB, "embedding": [1.0, 2.0]}),
        "embedding is not float32 bytes",
    ),
    (b"embeddings.s", packed(kind="embeddings", **{**EMB, "embedding": b""}), "embedding is empty"),
    (b"embeddings.other", packed(kind="embeddings", **EMB), "does not match its payload"),
]


@pytest.mark.parametrize(("topic", "payload", "reason"), MALFORMED)
def test_malformed_messages_are_rejected_with_reason(
    topic: bytes, payload: bytes, reason: str
) -> None:
    with pytest.raises(MalformedMessage, match=reason.replace("[", r"\[").replace("]", r"\]")):
        decode(topic, payload)


def test_fields_added_after_version_1_are_optional_and_unknown_ones_ignored() -> None:
    """An older publisher (no smoothed/groups) still decodes, smoothed then equal to probs;
    a newer one's extra fields are dropped, not fatal; an older status has defaults."""
    old = decode(b"tags.s", packed(probs=np.array([0.1, 0.9], "<f4").tobytes()))
    assert isinstance(old, Tags) and old.groups == {}
    np.testing.assert_array_equal(old.smoothed, old.probs)
    newer = decode(b"tags.s", packed(colour="blue", loudness=3.5))
    assert not hasattr(newer, "colour")
    status = decode(b"status.s", packed(kind="status", **STATUS))
    assert isinstance(status, Status) and not status.ended and status.error == ""
    mel = decode(b"mel.s", packed(kind="mel", **MEL))
    assert mel.frames.shape == (2, 4) and mel.frames.dtype == np.uint8


def test_subscriber_skips_messages_with_the_wrong_number_of_parts() -> None:
    context = zmq.Context.instance()
    pub = context.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    with Subscriber(f"tcp://127.0.0.1:{port}") as subscriber:
        deadline = time.monotonic() + 5
        while subscriber.receive(timeout=0.05) is None:  # connected once a message arrives
            pub.send_multipart([b"tags.s", packed(seq=0)])
            assert time.monotonic() < deadline
        while subscriber.receive(timeout=0.05) is not None:
            pass
        before = subscriber.malformed
        pub.send_multipart([b"tags.s"])
        pub.send_multipart([b"tags.s", packed(seq=1), b"extra"])
        pub.send_multipart([b"tags.s", packed(seq=2)])
        message = subscriber.receive(timeout=5)
        assert message is not None and message.seq == 2
        assert subscriber.malformed - before == 2
    pub.close(linger=0)


def wait_for_subscription(publisher: Publisher, subscriber: Subscriber, stream: str) -> None:
    """PUB/SUB joins asynchronously: publish probes on a side topic until one arrives."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        publisher.publish(Status(stream=stream, t_start=0.0, t_end=0.0))
        if subscriber.receive(timeout=0.05) is not None:
            while subscriber.receive(timeout=0.05) is not None:
                pass
            return
    raise AssertionError("subscriber never connected")


def test_sequence_numbers_are_contiguous_per_topic() -> None:
    output = ZmqOutput(["tcp://127.0.0.1:0"])
    publisher = Publisher([output])
    with Subscriber(output.endpoints[0], topics=["tags.", "status.probe"]) as subscriber:
        wait_for_subscription(publisher, subscriber, "probe")
        for _ in range(50):
            publisher.publish(make_tags("a"))
            publisher.publish(make_tags("b"))
        got: dict[str, list[int]] = {"tags.a": [], "tags.b": []}
        while sum(map(len, got.values())) < 100:
            message = subscriber.receive(timeout=5)
            assert message is not None, "messages lost on loopback"
            got[message.topic].append(message.seq)
        assert got == {"tags.a": list(range(50)), "tags.b": list(range(50))}
        assert subscriber.gaps == 0
    publisher.close()


def test_subscriber_counts_gaps_and_malformed() -> None:
    context = zmq.Context.instance()
    pub = context.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    with Subscriber(f"tcp://127.0.0.1:{port}") as subscriber:
        deadline = time.monotonic() + 5
        while subscriber.receive(timeout=0.05) is None:
            pub.send_multipart([b"tags.s", packed(seq=0)])
            assert time.monotonic() < deadline
        while subscriber.receive(timeout=0.05) is not None:
            pass
        base = 1000
        pub.send_multipart([b"tags.s", packed(seq=base)])
        pub.send_multipart([b"tags.s", b"junk"])
        pub.send_multipart([b"tags.s", packed(seq=base + 5)])
        assert subscriber.receive(timeout=2).seq == base
        assert subscriber.receive(timeout=2).seq == base + 5
        assert subscriber.malformed == 1
        assert subscriber.missed["tags.s"] >= 4
    pub.close(linger=0)


def test_subscriber_that_never_reads_does_not_delay_another() -> None:
    """Publish 5000 large messages (2000/s, far above a pipeline's rate) while one
    subscriber never reads: the live subscriber still gets every message in order, the
    publisher never blocks, and only the sleeper loses messages (as seq gaps)."""
    output = ZmqOutput(["tcp://127.0.0.1:0"], high_water_mark=1000)
    publisher = Publisher([output])
    endpoint = output.endpoints[0]
    sleeper = Subscriber(endpoint, topics=["tags.", "status.sleeper"], high_water_mark=100)
    live = Subscriber(endpoint, topics=["tags.", "status.probe"], high_water_mark=100_000)
    wait_for_subscription(publisher, sleeper, "sleeper")
    wait_for_subscription(publisher, live, "probe")
    n = 5000
    received: list[int] = []

    def read_all() -> None:
        while len(received) < n and (message := live.receive(timeout=5)) is not None:
            received.append(message.seq)

    reader = threading.Thread(target=read_all)
    reader.start()

    def publish_all() -> None:
        start = time.perf_counter()
        for i in range(n):
            while time.perf_counter() < start + i / 2000:
                pass
            publisher.publish(make_tags("a", n=4096))

    # A publisher that blocked on the sleeper would never finish: the sleeper reads only
    # after this thread is done.
    publishing = threading.Thread(target=publish_all)
    publishing.start()
    publishing.join(120)
    assert not publishing.is_alive(), "the publisher blocked on a subscriber that never reads"
    reader.join(30)
    assert received == list(range(n))
    sleeper_got = []
    while (message := sleeper.receive(timeout=0.5)) is not None:
        sleeper_got.append(message.seq)
    assert 0 < len(sleeper_got) < n  # only the sleeper lost messages, at its high-water mark
    for socket in (sleeper, live):
        socket.close()
    publisher.close()

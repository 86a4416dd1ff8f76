"""Fuzzing the client decoder: 100,000 random and mutated messages raise only
``MalformedMessage`` (or decode into a message), none hangs, and memory stays flat.

Messages start from valid ones of every kind (tags, status, events, mel) and are broken
the ways a hostile or buggy peer would: truncated, bytes flipped, inserted or deleted,
fields removed or given wrong types (nested structures, huge integers, NaN, bytes keys),
wrong versions and kinds, topics that do not match, declared lengths far beyond the bytes
sent, nesting bombs, and plain random bytes. Seeded, so a failure replays.
"""

from __future__ import annotations

import gc
import math
import os
import random
import resource
import struct
import time
from collections.abc import Callable

import msgpack
import numpy as np
import zmq

from soundwatch.client import MalformedMessage, Subscriber, decode
from soundwatch.sinks.messages import MAX_PAYLOAD, Envelope, Event, Mel, Status, Tags, encode

MESSAGES = 100_000
SEED = 20240613
HANG_GUARD_S = 1.0  # far above the ~50 us a decode takes: catches blowups, not slowness


def valid_messages() -> list[Envelope]:
    probs = np.linspace(0, 1, 527, dtype=np.float32)
    made: list[Envelope] = [
        Tags(
            "porch", 1.0, 4.0, probs=probs, top=[("Dog", 0.9), ("Bark", 0.8)], groups={"dog": 0.9}
        ),
        Status(
            "porch",
            1.0,
            4.0,
            model="mn04",
            labels=["Speech", "Dog"],
            source={"kind": "synthetic", "programme": ["a", "b"], "native_rate": 32000},
            counters={"samples_in": 5, "windows_tagged": 2},
            latency={"p50": 0.1},
            groups={"dog": 0.2},
            inference={"passes": 3, "batch_le_1": 1},
        ),
        Event("porch", 1.0, 2.0, event_id=4, label="dog", state="end", onset=1.0, offset=2.0),
        Mel("porch", 1.0, 2.0, frames=np.arange(64 * 5, dtype=np.uint8).reshape(5, 64), bins=64),
    ]
    for seq, message in enumerate(made):
        message.seq = seq
        message.t_pub = 5.0
    return made


def random_value(rng: random.Random, depth: int = 0) -> object:
    """Any msgpack value, nested a little, with the awkward ones over-represented."""
    choice = rng.randrange(14 if depth < 3 else 10)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, -1, 2**63 - 1, -(2**63), 2**64 - 1, rng.randrange(-1000, 1000)])
    if choice == 3:
        return rng.choice([math.nan, math.inf, -math.inf, 0.5, -0.0, 1e308])
    if choice == 4:
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(8)))
    if choice == 5:
        return rng.randbytes(rng.randrange(0, 20))
    if choice == 6:
        return rng.choice(["start", "end", "tags", "status", "events", "mel", "porch", ""])
    if choice == 7:
        return rng.randbytes(4 * rng.randrange(0, 8))  # plausible float32 arrays
    if choice == 8:
        return msgpack.ExtType(rng.randrange(128), rng.randbytes(4))
    if choice == 9:
        return rng.randrange(-5, 600)
    if choice < 12:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = [rng.choice(["dog", "p50", "kind", "x"]) for _ in range(rng.randrange(4))]
    return {key: random_value(rng, depth + 1) for key in keys}


def mutate_body(rng: random.Random, body: dict) -> dict:
    body = dict(body)
    for _ in range(rng.randrange(1, 4)):
        action = rng.randrange(6)
        key = rng.choice(list(body)) if body else "v"
        if action == 0:
            body.pop(key, None)
        elif action in (1, 2):
            body[key] = random_value(rng)
        elif action == 3:
            body["v"] = rng.choice([0, 2, "1", None, 1.0, True, -1])
        elif action == 4:
            body["kind"] = rng.choice(["tag", "STATUS", None, 3, "mel", "events", "tags"])
        else:
            body[rng.choice([b"bytes_key", "unknown", "zzz"])] = random_value(rng)
    return body


def huge_length_header(rng: random.Random) -> bytes:
    """A container or string that declares far more than the bytes that follow."""
    marker, fmt = rng.choice(
        [(0xDD, ">I"), (0xDF, ">I"), (0xDB, ">I"), (0xC6, ">I"), (0xDC, ">H"), (0xC9, ">I")]
    )
    size = rng.choice([2**32 - 1, 2**31, 10**9, 65535]) if fmt == ">I" else 65535
    return bytes([marker]) + struct.pack(fmt, size) + rng.randbytes(rng.randrange(16))


def nesting_bomb(rng: random.Random) -> bytes:
    depth = rng.choice([100, 1000, 1023, 1025, 100_000])
    opener = rng.choice([b"\x91", b"\x81\xa1k"])  # [[[...]]] or {"k": {"k": ...}}
    inner = opener * depth + b"\xc0"
    if rng.random() < 0.5:  # inside a field of an otherwise valid-looking message
        return b"\x83\xa1v\x01\xa4kind\xa6status\xa6source" + inner
    return inner


def mutate_bytes(rng: random.Random, payload: bytes) -> bytes:
    data = bytearray(payload)
    for _ in range(rng.randrange(1, 5)):
        if not data:
            break
        i = rng.randrange(len(data))
        action = rng.randrange(4)
        if action == 0:
            data[i] = rng.randrange(256)
        elif action == 1:
            del data[i : i + rng.randrange(1, 9)]
        elif action == 2:
            data[i:i] = rng.randbytes(rng.randrange(1, 9))
        else:
            data[i] = rng.choice([0xC1, 0xDD, 0xDF, 0xC6, 0xDB, 0xD9, 0xC7, 0xD4])
    return bytes(data)


def cases(rng: random.Random) -> Callable[[], tuple[bytes, bytes]]:
    encoded = [encode(message) for message in valid_messages()]
    bodies = [(topic, msgpack.unpackb(payload)) for topic, payload in encoded]

    def one() -> tuple[bytes, bytes]:
        topic, payload = rng.choice(encoded)
        kind = rng.randrange(100)
        if kind < 15:
            payload = payload[: rng.randrange(len(payload))]  # truncated
        elif kind < 40:
            payload = mutate_bytes(rng, payload)
        elif kind < 75:
            topic, body = rng.choice(bodies)
            payload = msgpack.packb(mutate_body(rng, body), use_bin_type=True)
        elif kind < 82:
            payload = huge_length_header(rng)
        elif kind < 86:
            payload = nesting_bomb(rng)
        elif kind < 92:
            payload = rng.randbytes(rng.randrange(64))
        elif kind < 96:
            topic = rng.choice([b"", b"tags.", b"status.other", b"\xff\xfe", b"events.porch.x"])
        elif kind < 98:
            payload = msgpack.packb(random_value(rng), use_bin_type=True)
        else:
            payload = payload + b"\x00" * rng.choice([1, MAX_PAYLOAD])  # trailing / oversized
        return topic, payload

    return one


def resident_bytes() -> int:
    """This process's resident memory now (Linux), else its peak so far."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_random_and_mutated_messages_raise_only_malformed_message() -> None:
    rng = random.Random(SEED)
    next_case = cases(rng)
    outcomes = {"decoded": 0, "malformed": 0}
    slowest = 0.0
    baseline = 0
    for index in range(MESSAGES):
        if index == MESSAGES // 10:  # after warm-up (allocator arenas, caches)
            gc.collect()
            baseline = resident_bytes()
        topic, payload = next_case()
        start = time.perf_counter()
        try:
            decode(topic, payload)
            outcomes["decoded"] += 1
        except MalformedMessage:
            outcomes["malformed"] += 1
        except Exception as error:  # pragma: no cover - the failure being tested for
            raise AssertionError(
                f"case {index}: {type(error).__name__}: {error}; topic={topic!r} "
                f"payload={payload[:200]!r}"
            ) from error
        slowest = max(slowest, time.perf_counter() - start)
    gc.collect()
    growth = resident_bytes() - baseline
    print(f"\nfuzz: {outcomes}, slowest decode {slowest * 1000:.1f} ms, growth {growth} B")
    assert sum(outcomes.values()) == MESSAGES
    assert outcomes["malformed"] > MESSAGES // 2 and outcomes["decoded"] > 100
    assert slowest < HANG_GUARD_S
    assert growth < 8 * 2**20  # flat: nothing kept from 90,000 messages


def test_a_subscriber_skips_garbage_frames_and_keeps_receiving() -> None:
    """Through real sockets: wrong frame counts, garbage and an oversized frame are counted
    malformed (or refused by the socket) and the next good message still arrives."""
    context = zmq.Context.instance()
    publisher = context.socket(zmq.PUB)
    port = publisher.bind_to_random_port("tcp://127.0.0.1")
    subscriber = Subscriber(f"tcp://127.0.0.1:{port}")
    try:
        good = valid_messages()[2]
        topic, payload = encode(good)
        deadline = time.monotonic() + 20
        while subscriber.receive(timeout=0.05) is None:  # until the subscription is in place
            assert time.monotonic() < deadline, "the subscriber never connected"
            publisher.send_multipart([topic, payload])
        subscriber.malformed = 0
        publisher.send_multipart([topic])
        publisher.send_multipart([topic, payload, b"extra"])
        publisher.send_multipart([topic, b"\xdd\xff\xff\xff\xff"])
        publisher.send_multipart([b"status.porch", payload])  # topic does not match
        publisher.send_multipart([topic, payload])
        received = subscriber.receive(timeout=10)
        assert isinstance(received, Event) and received.event_id == good.event_id
        assert subscriber.malformed == 4
    finally:
        subscriber.close()
        publisher.close(linger=0)

"""The edge wire format: mel frame batches and health (edge -> server), acks (server -> edge).

Every message is one msgpack map with ``v`` (version) and ``kind``. Decoding checks every
field and raises :class:`MalformedEdgeMessage` naming the problem, so a listener can count
and ignore anything that is not a well-formed message (docs/edge.md has the tables).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from soundwatch.dsp.tables import N_MELS
from soundwatch.dsp.windows import FRAMES_PER_SECOND
from soundwatch.errors import SoundwatchError
from soundwatch.stream.spec import STREAM_ID, STREAM_ID_RULE

VERSION = 1
#: Frame encodings: float16 halves the bandwidth (docs/edge.md measures what it costs);
#: float32 is lossless.
ENCODINGS = {"float16": np.float16, "float32": np.float32}
#: The most frames one batch may hold (10 s of audio at 100 frames per second).
MAX_FRAMES = 1000
#: The longest node or stream name.
MAX_NAME = 64
#: The most streams one health message may describe.
MAX_STREAMS = 256


class MalformedEdgeMessage(SoundwatchError):
    """A received edge message does not follow the wire format; the text says why."""


@dataclass
class FrameBatch:
    """Consecutive mel frames of one edge stream.

    ``seq`` counts the stream's batches from 0 in this edge process (``epoch``); ``base`` is
    the oldest seq the edge still holds (batches below it that the server has not seen are
    lost: a gap). Frame ``frame + i`` of the edge's segment ``segment`` is centred at Unix
    time ``t_origin + (frame + i) / 100``. ``new_segment``: the edge lost audio (device
    loss, buffer overflow) right before these frames. ``end``: the stream ended after them.
    ``waits``: the edge's source can wait (a file read fast), so the server holds the edge
    back instead of dropping windows.
    """

    node: str
    stream: str
    epoch: int
    seq: int
    base: int
    segment: int
    t_origin: float
    frame: int
    frames: np.ndarray  # float32 [128, k] once decoded
    new_segment: bool = False
    end: bool = False
    waits: bool = False
    encoding: str = "float16"

    @property
    def t_start(self) -> float:
        """Unix time of the batch's first frame."""
        return self.t_origin + self.frame / FRAMES_PER_SECOND


@dataclass
class Health:
    """An edge's own counters: per stream (its source's) and the node's (buffer, resends)."""

    node: str
    epoch: int
    t: float
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)  # stream -> {source, counters}


@dataclass
class Ack:
    """The server has taken (or given up as lost) every batch of ``stream`` (in ``epoch``)
    below ``next``: the edge may forget them."""

    stream: str
    epoch: int
    next: int


EdgeMessage = FrameBatch | Health


def encode_frames(batch: FrameBatch) -> bytes:
    dtype = ENCODINGS[batch.encoding]
    data = np.ascontiguousarray(batch.frames, dtype=dtype)
    return msgpack.packb(
        {
            "v": VERSION,
            "kind": "frames",
            "node": batch.node,
            "stream": batch.stream,
            "epoch": batch.epoch,
            "seq": batch.seq,
            "base": batch.base,
            "segment": batch.segment,
            "t_origin": batch.t_origin,
            "frame": batch.frame,
            "new_segment": batch.new_segment,
            "end": batch.end,
            "waits": batch.waits,
            "encoding": batch.encoding,
            "n_frames": data.shape[1],
            "data": data.tobytes(),
        }
    )


def encode_health(health: Health) -> bytes:
    return msgpack.packb(
        {
            "v": VERSION,
            "kind": "health",
            "node": health.node,
            "epoch": health.epoch,
            "t": health.t,
            "streams": health.streams,
        }
    )


def encode_ack(ack: Ack) -> bytes:
    return msgpack.packb(
        {"v": VERSION, "kind": "ack", "stream": ack.stream, "epoch": ack.epoch, "next": ack.next}
    )


def _unpack(data: bytes) -> dict[str, Any]:
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as error:  # msgpack raises several types for garbage
        raise MalformedEdgeMessage(f"not msgpack: {type(error).__name__}") from None
    if not isinstance(body, dict):
        raise MalformedEdgeMessage(f"not a map but {type(body).__name__}")
    version = body.get("v")
    if type(version) is not int or version != VERSION:
        raise MalformedEdgeMessage(f"unknown version {version!r} (this listener speaks {VERSION})")
    return body


def _get(body: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(key)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int subclass: accept it only where bool is asked for
    if type(value) not in kinds and not (float in kinds and type(value) is int):
        names = "/".join(k.__name__ for k in kinds)
        raise MalformedEdgeMessage(f"{key!r} must be {names}, got {type(value).__name__}")
    return value


def _name(body: dict[str, Any], key: str) -> str:
    value = _get(body, key, str)
    if len(value) > MAX_NAME or not STREAM_ID.match(value):
        raise MalformedEdgeMessage(f"bad {key} {value[:80]!r}: {STREAM_ID_RULE}")
    return value


def _count(body: dict[str, Any], key: str) -> int:
    value = _get(body, key, int)
    if not 0 <= value < 2**63:
        raise MalformedEdgeMessage(f"{key!r} must be a non-negative 64-bit integer")
    return value


def _time(body: dict[str, Any], key: str) -> float:
    value = float(_get(body, key, float))
    if not np.isfinite(value) or not 0 <= value < 1e11:
        raise MalformedEdgeMessage(f"{key!r} must be a Unix time, got {value!r}")
    return value


def decode(data: bytes) -> EdgeMessage:
    """An edge -> server message, checked field by field."""
    body = _unpack(data)
    kind = body.get("kind")
    if kind == "frames":
        return _decode_frames(body)
    if kind == "health":
        return _decode_health(body)
    raise MalformedEdgeMessage(f"unknown kind {kind!r} (expected frames or health)")


def _decode_frames(body: dict[str, Any]) -> FrameBatch:
    encoding = _get(body, "encoding", str)
    if encoding not in ENCODINGS:
        raise MalformedEdgeMessage(f"unknown encoding {encoding!r} (float16 or float32)")
    n_frames = _count(body, "n_frames")
    if n_frames > MAX_FRAMES:
        raise MalformedEdgeMessage(f"{n_frames} frames in one batch (at most {MAX_FRAMES})")
    data = _get(body, "data", bytes)
    dtype = np.dtype(ENCODINGS[encoding])
    if len(data) != N_MELS * n_frames * dtype.itemsize:
        raise MalformedEdgeMessage(
            f"data holds {len(data)} bytes, expected {N_MELS} x {n_frames} {encoding}"
        )
    frames = np.frombuffer(data, dtype=dtype).reshape(N_MELS, n_frames).astype(np.float32)
    if not np.isfinite(frames).all():
        raise MalformedEdgeMessage("frames hold NaN or Inf")
    seq, base = _count(body, "seq"), _count(body, "base")
    if base > seq:
        raise MalformedEdgeMessage(f"base {base} is past seq {seq}")
    return FrameBatch(
        node=_name(body, "node"),
        stream=_name(body, "stream"),
        epoch=_count(body, "epoch"),
        seq=seq,
        base=base,
        segment=_count(body, "segment"),
        t_origin=_time(body, "t_origin"),
        frame=_count(body, "frame"),
        frames=frames,
        new_segment=_get(body, "new_segment", bool),
        end=_get(body, "end", bool),
        waits=_get(body, "waits", bool),
        encoding=encoding,
    )


def _decode_health(body: dict[str, Any]) -> Health:
    streams = _get(body, "streams", dict)
    if len(streams) > MAX_STREAMS:
        raise MalformedEdgeMessage(f"health of {len(streams)} streams (at most {MAX_STREAMS})")
    checked: dict[str, dict[str, Any]] = {}
    for name, entry in streams.items():
        if not isinstance(name, str) or not STREAM_ID.match(name) or len(name) > MAX_NAME:
            raise MalformedEdgeMessage(f"bad stream name {str(name)[:80]!r} in health")
        if not isinstance(entry, dict):
            raise MalformedEdgeMessage(f"health of {name} is not a map")
        source = entry.get("source", {})
        counters = entry.get("counters", {})
        if not isinstance(source, dict) or not isinstance(counters, dict):
            raise MalformedEdgeMessage(f"health of {name}: source and counters must be maps")
        if not all(isinstance(k, str) and type(v) is int for k, v in counters.items()):
            raise MalformedEdgeMessage(f"health of {name}: counters must map names to integers")
        checked[name] = {"source": source, "counters": counters}
    return Health(
        node=_name(body, "node"),
        epoch=_count(body, "epoch"),
        t=_time(body, "t"),
        streams=checked,
    )


def decode_ack(data: bytes) -> Ack:
    """A server -> edge acknowledgement."""
    body = _unpack(data)
    if body.get("kind") != "ack":
        raise MalformedEdgeMessage(f"unknown kind {body.get('kind')!r} (expected ack)")
    return Ack(stream=_name(body, "stream"), epoch=_count(body, "epoch"), next=_count(body, "next"))

"""The wire schema: small typed messages, encoded as msgpack maps (see docs/protocol.md).

Every message travels as a two-part ZeroMQ message ``[topic, payload]``; the topic is
``<kind>.<stream>`` (``tags.kitchen``, ``status.kitchen``, ``events.kitchen``,
``mel.kitchen``, ``embeddings.kitchen``) and the
payload a msgpack map holding the common envelope (``v``, ``kind``, ``stream``, ``seq``,
``t_start``, ``t_end``, ``t_pub``) plus the fields of its kind. ``seq`` counts from 0 and
is contiguous per topic, so a subscriber sees exactly what it missed.

Fields added after version 1 was first published (:data:`ADDED_FIELDS`) are optional on
receipt, so a newer subscriber still reads an older publisher; an older subscriber ignores
them. Changing the meaning of a field needs a new schema version.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import msgpack
import numpy as np

from soundwatch.errors import SoundwatchError

SCHEMA_VERSION = 1
KINDS = ("tags", "status", "events", "mel", "embeddings")


class MalformedMessage(SoundwatchError):
    """A received message does not follow the schema; the text says which part and why."""


@dataclass
class Envelope:
    """Fields every message carries."""

    kind: ClassVar[str] = ""
    stream: str
    t_start: float  # audio time of the first sample covered, Unix seconds (capture clock)
    t_end: float  # audio time just after the last sample covered, Unix seconds
    seq: int = -1  # assigned by the publisher, contiguous per topic from 0
    t_pub: float = 0.0  # wall-clock time the message was published, Unix seconds

    @property
    def topic(self) -> str:
        return f"{self.kind}.{self.stream}"


def _no_floats() -> np.ndarray:
    return np.zeros(0, dtype=np.float32)


@dataclass
class Tags(Envelope):
    """Tag probabilities of one window.

    ``probs`` are the window's own probabilities in label order; ``smoothed`` the same
    classes smoothed across the stream's windows (``publish.smoothing``; equal to ``probs``
    when smoothing is off); ``top`` the best few by ``smoothed``; ``groups`` the smoothed
    score of each event group as the detector scores it (the highest smoothed probability
    among its classes, or a calibrated group's logistic score of them);
    ``head`` each loaded head label's probability in this window (custom sounds, see
    docs/custom-sounds.md; their smoothed scores are in ``groups`` beside the others).
    ``carried``: the window had nothing new to hear since the stream's last tagged window
    (``pipeline.gate``), so no forward pass ran: ``probs`` are that window's, carried forward.
    """

    kind: ClassVar[str] = "tags"
    probs: np.ndarray = field(default_factory=_no_floats)
    top: list[tuple[str, float]] = field(default_factory=list)
    smoothed: np.ndarray = field(default_factory=_no_floats)
    groups: dict[str, float] = field(default_factory=dict)
    head: dict[str, float] = field(default_factory=dict)  # head label -> window probability
    carried: bool = False  # probs carried from the last tagged window (activity gate)

    def __post_init__(self) -> None:
        if len(self.smoothed) == 0:  # not smoothed: the window's own probabilities
            self.smoothed = self.probs


@dataclass
class Status(Envelope):
    """Health of one stream, published every few seconds."""

    kind: ClassVar[str] = "status"
    model: str = ""
    labels: list[str] = field(default_factory=list)
    labels_sha256: str = ""
    window: float = 0.0
    hop: float = 0.0
    source: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    latency: dict[str, float] = field(default_factory=dict)
    groups: dict[str, float] = field(default_factory=dict)  # event group -> threshold_on
    events_window: float = 0.0  # the event detector's window series (0: events off)
    events_hop: float = 0.0
    inference: dict[str, float] = field(default_factory=dict)  # the run's, see docs/protocol
    backend: str = ""  # what runs the model: "onnx/cpu", "torch/cpu", "torch/cuda"
    ended: bool = False  # the stream has ended: this is its last status
    error: str = ""  # why the stream stopped early ("" when it did not)


@dataclass
class Event(Envelope):
    """A sound event starting (``state="start"``) or ending (``state="end"``).

    ``onset``/``offset`` are Unix seconds; ``offset`` is ``None`` while the sound goes on.
    ``t_start``/``t_end`` of the envelope equal onset and (current) offset.
    """

    kind: ClassVar[str] = "events"
    event_id: int = 0
    label: str = ""
    state: str = "start"
    onset: float = 0.0
    offset: float | None = None
    peak: float = 0.0
    record_id: int = -1  # the event's id in the recorder's history (-1: not recorded)


@dataclass
class Mel(Envelope):
    """A stretch of the stream's log-mel spectrogram, compact, for live displays.

    ``frames`` is ``[n, bins]`` uint8, oldest first, ``frame_rate`` frames per second;
    a byte ``b`` stands for the log-mel value ``lo + b / 255 * (hi - lo)`` (the values the
    model reads, pooled to ``bins`` bands and ``frame_rate``). Only published when asked
    for (``publish.mel``), never raw audio.
    """

    kind: ClassVar[str] = "mel"
    frames: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.uint8))
    bins: int = 0
    frame_rate: float = 0.0
    lo: float = 0.0
    hi: float = 1.0


@dataclass
class Embedding(Envelope):
    """The model's embedding of one tagged window (heads read it with sqrt of ``probs``), for custom
    classifiers downstream. ``embedding`` travels as little-endian float32 bytes like
    ``probs``; only published when asked for (``publish.embeddings``)."""

    kind: ClassVar[str] = "embeddings"
    embedding: np.ndarray = field(default_factory=_no_floats)


MESSAGE_TYPES: dict[str, type[Envelope]] = {
    cls.kind: cls for cls in (Tags, Status, Event, Mel, Embedding)
}
#: Fields added to a kind after schema version 1 was first published: optional on receipt.
ADDED_FIELDS: dict[str, frozenset[str]] = {
    "tags": frozenset({"smoothed", "groups", "head", "carried"}),
    "status": frozenset(
        {"inference", "groups", "events_window", "events_hop", "ended", "error", "backend"}
    ),
    "events": frozenset({"record_id"}),
    "mel": frozenset(),
    "embeddings": frozenset(),  # the kind itself is an addition: older clients skip it
}


def encode(message: Envelope) -> tuple[bytes, bytes]:
    """Return ``(topic, payload)`` bytes for a message whose ``seq`` and ``t_pub`` are set."""
    # A shallow map of the fields: msgpack reads the nested lists and maps once, so the deep
    # copy ``dataclasses.asdict`` makes was a third of the per-window publishing cost.
    body = {name: getattr(message, name) for name in _field_names(type(message))}
    body["v"] = SCHEMA_VERSION
    body["kind"] = message.kind
    if isinstance(message, Tags):
        body["probs"] = _float32_bytes(message.probs)
        body["smoothed"] = _float32_bytes(message.smoothed)
        body["top"] = [[label, float(p)] for label, p in message.top]
        body["groups"] = {name: float(score) for name, score in message.groups.items()}
        body["head"] = {label: float(p) for label, p in message.head.items()}
    elif isinstance(message, Mel):
        body["frames"] = np.ascontiguousarray(message.frames, dtype=np.uint8).tobytes()
    elif isinstance(message, Embedding):
        body["embedding"] = _float32_bytes(message.embedding)
    return message.topic.encode(), msgpack.packb(body, use_bin_type=True)


@functools.cache
def _field_names(cls: type[Envelope]) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _float32_bytes(values: np.ndarray) -> bytes:
    return np.ascontiguousarray(values, dtype="<f4").tobytes()


def _float32_array(topic: bytes, name: str, data: object, kind: str = "tags") -> np.ndarray:
    if not isinstance(data, bytes) or len(data) % 4:
        raise MalformedMessage(f"{kind} message on topic {topic!r}: {name} is not float32 bytes")
    return np.frombuffer(data, dtype="<f4")


#: Most bytes one payload may hold (a status of a 10,000-class model is ~0.3 MiB); the
#: client's socket refuses larger frames too. With the limits below, a hostile payload
#: costs bounded memory and time (docs/reliability.md: the fuzz test).
MAX_PAYLOAD = 4 * 1024 * 1024
_UNPACK_LIMITS = {  # the buffer itself is limited to MAX_PAYLOAD before unpacking
    "max_str_len": 1024 * 1024,
    "max_bin_len": MAX_PAYLOAD,
    "max_array_len": 100_000,
    "max_map_len": 10_000,
    "max_ext_len": 0,  # no extension types in the schema
}


def decode(topic: bytes, payload: bytes) -> Envelope:
    """Parse and check one received message; raise :class:`MalformedMessage` if it is not
    a soundwatch message of a known kind and schema version.

    Only :class:`MalformedMessage` escapes, whatever the bytes (tested with 100,000 random
    and mutated messages); nesting deeper than the schema's is refused by the type checks."""
    if len(payload) > MAX_PAYLOAD:
        raise MalformedMessage(
            f"payload on topic {topic!r} holds {len(payload)} bytes, over {MAX_PAYLOAD}"
        )
    try:
        body = msgpack.unpackb(payload, raw=False, **_UNPACK_LIMITS)
    except Exception as error:  # msgpack raises several unrelated types
        raise MalformedMessage(f"payload on topic {topic!r} is not msgpack: {error}") from None
    if not isinstance(body, dict):
        raise MalformedMessage(f"payload on topic {topic!r} is not a map")
    version = body.pop("v", None)
    if type(version) is not int or version != SCHEMA_VERSION:  # True and 1.0 are not 1
        raise MalformedMessage(
            f"schema version {version!r} on topic {topic!r}; this client reads version "
            f"{SCHEMA_VERSION}: upgrade the older side"
        )
    kind = body.pop("kind", None)
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MalformedMessage(f"unknown message kind {kind!r} on topic {topic!r}")
    names = {f.name for f in fields(cls)}
    missing = [
        f.name for f in fields(cls) if f.name not in body and f.name not in ADDED_FIELDS[kind]
    ]
    unknown = set(body) - names  # keys may be str or bytes: never sorted together
    if missing:
        raise MalformedMessage(f"{kind} message on topic {topic!r} lacks fields {missing}")
    if unknown:  # newer minor additions are tolerated, not fatal
        body = {k: v for k, v in body.items() if k in names}
    _check_types(kind, topic, body)
    if kind == "tags":
        body["probs"] = _float32_array(topic, "probs", body["probs"])
        if "smoothed" in body:
            body["smoothed"] = _float32_array(topic, "smoothed", body["smoothed"])
            if len(body["smoothed"]) != len(body["probs"]):
                raise MalformedMessage(
                    f"tags message on topic {topic!r}: smoothed and probs differ in length"
                )
        else:  # an older publisher: nothing smoothed
            body["smoothed"] = body["probs"]
        body["top"] = [(label, float(p)) for label, p in body["top"]]
    elif kind == "mel":
        body["frames"] = _mel_frames(topic, body)
    elif kind == "embeddings":
        body["embedding"] = _float32_array(topic, "embedding", body["embedding"], kind)
        if not len(body["embedding"]):
            raise MalformedMessage(f"embeddings message on topic {topic!r}: embedding is empty")
    message = cls(**body)
    expected_topic = message.topic.encode()
    if topic != expected_topic:
        raise MalformedMessage(f"topic {topic!r} does not match its payload ({expected_topic!r})")
    return message


def _mel_frames(topic: bytes, body: dict[str, Any]) -> np.ndarray:
    frames, bins = body["frames"], body["bins"]
    if not isinstance(frames, bytes) or bins <= 0 or len(frames) % bins:
        raise MalformedMessage(
            f"mel message on topic {topic!r}: frames is not uint8 bytes of whole rows of "
            f"{bins} bins"
        )
    return np.frombuffer(frames, dtype=np.uint8).reshape(-1, bins)


_NUMBER = (int, float)
_SCALAR = (str, int, float, bool, type(None))
#: Expected types of fields, checked on receipt so a malformed message is rejected with
#: its reason instead of failing later in the subscriber's code.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "stream": (str,),
    "seq": (int,),
    "t_start": _NUMBER,
    "t_end": _NUMBER,
    "t_pub": _NUMBER,
    "model": (str,),
    "labels": (list,),
    "labels_sha256": (str,),
    "window": _NUMBER,
    "hop": _NUMBER,
    "source": (dict,),
    "counters": (dict,),
    "latency": (dict,),
    "event_id": (int,),
    "record_id": (int,),
    "label": (str,),
    "state": (str,),
    "onset": _NUMBER,
    "offset": (*_NUMBER, type(None)),
    "peak": _NUMBER,
    "groups": (dict,),
    "head": (dict,),
    "events_window": _NUMBER,
    "events_hop": _NUMBER,
    "inference": (dict,),
    "backend": (str,),
    "ended": (bool,),
    "carried": (bool,),
    "error": (str,),
    "bins": (int,),
    "frame_rate": _NUMBER,
    "lo": _NUMBER,
    "hi": _NUMBER,
}


def _check_types(kind: str, topic: bytes, body: dict[str, Any]) -> None:
    for name, value in body.items():
        expected = _FIELD_TYPES.get(name)
        if expected is not None and (
            not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected)
        ):
            raise MalformedMessage(
                f"{kind} message on topic {topic!r}: field {name!r} has type {type(value).__name__}"
            )
    if kind == "tags":
        top = body["top"]
        if not isinstance(top, list) or not all(
            isinstance(pair, list | tuple)
            and len(pair) == 2
            and isinstance(pair[0], str)
            and isinstance(pair[1], _NUMBER)
            for pair in top
        ):
            raise MalformedMessage(
                f"tags message on topic {topic!r}: top is not a list of [label, probability]"
            )
    if kind == "events" and body["state"] not in ("start", "end"):
        raise MalformedMessage(f"events message on topic {topic!r}: unknown state")
    if "head" in body and not all(
        isinstance(k, str) and isinstance(v, _NUMBER) and not isinstance(v, bool)
        for k, v in body["head"].items()
    ):
        raise MalformedMessage(f"{kind} message on topic {topic!r}: head is not label -> number")
    if "groups" in body and not all(
        isinstance(k, str) and isinstance(v, _NUMBER) and not isinstance(v, bool)
        for k, v in body["groups"].items()
    ):
        raise MalformedMessage(f"{kind} message on topic {topic!r}: groups is not name -> number")
    if kind == "status":
        for name in ("counters", "latency", "inference"):
            if not all(
                isinstance(k, str) and isinstance(v, _NUMBER) for k, v in body.get(name, {}).items()
            ):
                raise MalformedMessage(f"status message on topic {topic!r}: {name} not numbers")
        if not all(isinstance(label, str) for label in body["labels"]):
            raise MalformedMessage(f"status message on topic {topic!r}: labels not strings")
        if not all(
            isinstance(k, str)
            and (
                isinstance(v, _SCALAR)
                or (isinstance(v, list) and all(isinstance(x, _SCALAR) for x in v))
            )
            for k, v in body["source"].items()
        ):
            raise MalformedMessage(
                f"status message on topic {topic!r}: source values not scalars or lists of them"
            )

"""Parsing ``[ID=]SPEC`` source arguments.

SPEC forms (options after ``?`` as ``key=value`` pairs joined by ``&``):

* ``mic`` / ``mic:DEVICE``: a PortAudio input device, by index or by part of its name
  (case-insensitive); options ``channels``, ``rate``, ``blocksize``.
* ``file:PATH``: an audio file (WAV, FLAC, OGG, ...); no options.
* ``pcm:-`` (stdin) / ``pcm:PATH`` (e.g. a named pipe): raw interleaved PCM; options
  ``rate`` (default 16000), ``channels`` (1), ``format`` (s16le; also s32le, f32le,
  f64le, u8). Example: ``pcm:-?rate=48000&channels=2&format=s16le``.
* ``synthetic``: generated demo sounds; option ``seed`` (0).

The default ids are ``mic``, the file's stem, ``pcm`` and ``synthetic``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from soundwatch.errors import SoundwatchError

VALID_FORMS = (
    "valid source forms: [ID=]mic, [ID=]mic:DEVICE (index or part of the name), "
    "[ID=]file:PATH, [ID=]pcm:- (raw PCM on stdin, e.g. pcm:-?rate=16000&channels=1&"
    "format=s16le), [ID=]synthetic (e.g. synthetic?seed=1)"
)

#: Options each kind accepts in its ``?key=value`` part.
OPTIONS: dict[str, tuple[str, ...]] = {
    "mic": ("channels", "rate", "blocksize"),
    "file": (),
    "pcm": ("rate", "channels", "format"),
    "synthetic": ("seed",),
}

_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")  # what may stand before "=" in ID=SPEC
#: A stream id is a topic part (``tags.<id>``): letters, digits, ``_`` and ``-`` only.
STREAM_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")
STREAM_ID_RULE = "a stream id may hold only letters, digits, _ and - (it is part of the topic)"


def check_stream_id(name: str) -> str:
    """``name`` if it is a valid stream id, else a clear error."""
    if not STREAM_ID.match(name):
        raise SoundwatchError(f"invalid stream id {name!r}: {STREAM_ID_RULE}")
    return name


def sanitize_stream_id(text: str) -> str:
    """A valid stream id made from ``text`` (a file name, say): other characters become _."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", text) or "stream"


@dataclass(frozen=True)
class SourceSpec:
    """A parsed SPEC: kind, target (device / path / ``-``) and options."""

    kind: str
    target: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    def default_id(self) -> str:
        if self.kind == "file" and self.target:
            return sanitize_stream_id(Path(self.target).stem or "file")
        return self.kind

    def int_option(self, name: str) -> int | None:
        """An integer option, or None when absent; a clear error when it is not a number."""
        value = self.options.get(name)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise SoundwatchError(
                f"option {name}={value!r} of source {self.kind!r} must be an integer"
            ) from None


def _split_options(kind: str, rest: str, spec: str) -> tuple[str, dict[str, str]]:
    if kind == "file" or "?" not in rest:
        return rest, {}
    rest, query = rest.split("?", 1)
    options: dict[str, str] = {}
    for pair in filter(None, query.split("&")):
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise SoundwatchError(f"bad option {pair!r} in source {spec!r}: use key=value")
        if key not in OPTIONS[kind]:
            allowed = ", ".join(OPTIONS[kind]) or "none"
            raise SoundwatchError(
                f"unknown option {key!r} for a {kind} source in {spec!r} (allowed: {allowed})"
            )
        options[key] = value
    return rest, options


def parse_source_spec(spec: str) -> SourceSpec:
    """Parse a SPEC (without ``ID=``); ``SoundwatchError`` listing the forms when invalid."""
    text = spec.strip()
    kind, colon, rest = text.partition(":")
    head, _, _ = kind.partition("?")
    if head not in OPTIONS:
        raise SoundwatchError(f"unknown source {spec!r}; {VALID_FORMS}")
    if not colon and "?" in kind:  # "mic?channels=2", "synthetic?seed=3"
        kind, rest = head, kind[len(head) :]
    target, options = _split_options(kind, rest, spec)
    if kind == "mic":
        return SourceSpec("mic", target or None, options)
    if kind == "synthetic":
        if colon:
            raise SoundwatchError(f"source {spec!r}: synthetic takes no ':'; {VALID_FORMS}")
        return SourceSpec("synthetic", None, options)
    if not target:
        what = "a path" if kind == "file" else "'-' (stdin) or a path"
        raise SoundwatchError(f"source {spec!r} needs {what} after '{kind}:'; {VALID_FORMS}")
    return SourceSpec(kind, target, options)


def parse_source_arg(arg: str) -> tuple[str, str]:
    """Split ``[ID=]SPEC`` into ``(id, spec)``, with the default id when none is given.

    An ``=`` counts as the id separator only when what precedes it is a plain name
    (letters, digits, ``_.-``), so ``file:a=b.wav`` and ``pcm:-?rate=8000`` need no id.
    """
    text = arg.strip()
    if not text:
        raise SoundwatchError(f"empty source; {VALID_FORMS}")
    name, sep, spec = text.partition("=")
    if sep and _ID.match(name):
        if not spec.strip():
            raise SoundwatchError(f"source {arg!r} has an id but no spec; {VALID_FORMS}")
        parse_source_spec(spec)  # validate now, so a bad spec fails at argument parsing
        return check_stream_id(name), spec.strip()
    parsed = parse_source_spec(text)
    return parsed.default_id(), text

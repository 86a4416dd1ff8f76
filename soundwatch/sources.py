"""Open the configured capture sources: what ``soundwatch run`` and ``soundwatch edge`` share.

Kept apart from :mod:`soundwatch.runner` (which loads the model) so an edge node, which only
captures and computes log-mel frames, opens its sources without importing torch.
"""

from __future__ import annotations

import logging

from soundwatch.config import Config
from soundwatch.errors import SoundwatchError
from soundwatch.stream import (
    Source,
    list_input_devices,
    open_source,
    parse_source_arg,
    parse_source_spec,
)

log = logging.getLogger(__name__)


def resolve_source_spec(spec: str, demo_fallback: bool = True) -> str:
    """``auto`` means the default microphone, or the synthetic demo when there is none
    (``demo_fallback``; without it, no microphone is an error: an edge node must not send
    made-up audio as if it were a room)."""
    if spec != "auto":
        return spec
    try:
        devices = list_input_devices()
        why = "no audio input device found"
    except SoundwatchError as error:
        devices, why = [], f"no microphone available ({error})"
    if devices:
        return "mic"
    if not demo_fallback:
        raise SoundwatchError(f"{why}; give the sources with --source (mic:NAME, file:PATH, ...)")
    log.warning("%s; using the synthetic demo source", why)
    return "synthetic"


def sources_from_args(args: tuple[str, ...], loop: bool | None = None) -> list[dict]:
    """``--source [ID=]SPEC`` values as ``sources`` config entries (validated with the
    rest of the config, so a bad id is reported like a bad config value)."""
    entries = []
    for arg in args:
        name, sep, rest = arg.strip().partition("=")
        if (rest if sep else name).strip() == "auto":  # resolved when the sources open
            stream_id, spec = (name.strip() if sep else None), "auto"
        else:
            stream_id, spec = parse_source_arg(arg)
        entry: dict = {"id": stream_id, "spec": spec}
        if loop is not None:
            entry["loop"] = loop
        entries.append(entry)
    return entries


def open_sources(config: Config, demo_fallback: bool = True) -> list[Source]:
    """Open every configured source (not started yet); close them all on any error.
    ``demo_fallback``: see :func:`resolve_source_spec`."""
    opened: list[Source] = []
    try:
        for source in config.sources:
            spec = resolve_source_spec(source.spec, demo_fallback)
            stream_id = source.id or parse_source_spec(spec).default_id()
            opened.append(
                open_source(
                    stream_id,
                    spec,
                    pace=config.pipeline.pace,
                    loop=source.loop,
                    channels=source.channels,
                    samplerate=source.samplerate,
                    blocksize=source.blocksize,
                )
            )
    except BaseException:
        for source in opened:
            source.stop()
        raise
    return opened

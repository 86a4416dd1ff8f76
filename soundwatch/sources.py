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


def resolve_source_spec(spec: str) -> str:
    """``auto`` means the default microphone, or the synthetic demo when there is none."""
    if spec != "auto":
        return spec
    try:
        devices = list_input_devices()
    except SoundwatchError as error:
        log.warning("no microphone available (%s); using the synthetic demo source", error)
        return "synthetic"
    if not devices:
        log.warning("no audio input device found; using the synthetic demo source")
        return "synthetic"
    return "mic"


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


def open_sources(config: Config) -> list[Source]:
    """Open every configured source (not started yet); close them all on any error."""
    opened: list[Source] = []
    try:
        for source in config.sources:
            spec = resolve_source_spec(source.spec)
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

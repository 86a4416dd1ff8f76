"""``soundwatch events``: list the recorded events and play their clips."""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import datetime
from pathlib import Path

import click

from soundwatch.errors import SoundwatchError

_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(text: str, now: float | None = None) -> float:
    """``2h``, ``30m``, ``7d`` (that long ago) or an ISO date/time (local time unless it
    names its zone) -> Unix seconds."""
    now = time.time() if now is None else now
    match = _AGO.match(text.strip())
    if match:
        return now - float(match[1]) * _UNITS[match[2]]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise SoundwatchError(
            f"cannot read the time {text!r}; use an age such as 30m, 2h, 7d or an ISO time "
            "such as 2024-05-01T03:00"
        ) from None


def record_dir(record: Path | None, config_path: Path | None) -> Path:
    """``--record DIR``, else the config's ``recorder.dir``."""
    if record is not None:
        return record
    from soundwatch.config import load_config

    configured = load_config(config_path).recorder.dir
    if configured is None:
        raise SoundwatchError(
            "which history? pass --record DIR (the directory given to soundwatch run --record) "
            "or a --config whose recorder.dir is set"
        )
    return configured


@click.command("events")
@click.option("--record", type=click.Path(file_okay=False, path_type=Path), metavar="DIR")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--since", metavar="AGE|ISO", help="e.g. 2h, 7d, 2024-05-01T22:00")
@click.option("--until", metavar="AGE|ISO")
@click.option("--label", help="only this event label (e.g. dog)")
@click.option("--stream", help="only this stream id")
@click.option("--limit", type=click.IntRange(1), default=None, help="only the newest N")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per event")
@click.option("--play", "play_id", type=int, metavar="ID", help="play this event's clip")
def events(
    record: Path | None,
    config_path: Path | None,
    since: str | None,
    until: str | None,
    label: str | None,
    stream: str | None,
    limit: int | None,
    as_json: bool,
    play_id: int | None,
) -> None:
    """List recorded events (oldest first), or play one event's clip."""
    from soundwatch.cli import user_errors

    user_errors(_events)(record, config_path, since, until, label, stream, limit, as_json, play_id)


def _events(
    record: Path | None,
    config_path: Path | None,
    since: str | None,
    until: str | None,
    label: str | None,
    stream: str | None,
    limit: int | None,
    as_json: bool,
    play_id: int | None,
) -> None:
    from soundwatch.recorder.history import History

    history = History(record_dir(record, config_path), create=False)
    try:
        if play_id is not None:
            _play(history, play_id)
            return
        rows = history.query(
            since=parse_when(since) if since else None,
            until=parse_when(until) if until else None,
            label=label,
            stream=stream,
            limit=limit,
        )
    finally:
        history.close()
    for row in rows:
        if as_json:
            click.echo(json.dumps(row))
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["onset"]))
        length = f"{row['offset'] - row['onset']:5.1f} s" if row["offset"] is not None else "  -   "
        clip = row["clip"] or f"no clip: {row['clip_reason']}"
        if row["clip"] and row["clip_reason"]:
            clip += f" ({row['clip_reason']})"
        click.echo(
            f"{row['id']:>6}  {when}  {row['stream']:<12} {row['label']:<18} {length}  "
            f"peak {row['peak']:.2f}  {clip}"
        )
    if not rows and not as_json:
        click.echo("no events match", err=True)


def _play(history: object, row_id: int) -> None:
    from soundwatch.recorder.history import History

    assert isinstance(history, History)
    row = history.get(row_id)
    if row is None:
        raise SoundwatchError(
            f"no event {row_id} in {history.dir}; list them with soundwatch events"
        )
    if row["clip"] is None:
        raise SoundwatchError(f"event {row_id} has no clip: {row['clip_reason']}")
    click.echo(row["clip"])
    try:
        import sounddevice as sd
        import soundfile as sf

        data, rate = sf.read(row["clip"], dtype="float32")
        sd.play(data, rate)
        sd.wait()
    except Exception as error:  # no output device, no PortAudio: the path is printed
        click.echo(f"soundwatch: cannot play it here ({error}); open the file above", err=True)
        sys.exit(0)

"""``soundwatch record``: save the last seconds of a live stream as a custom-sound example.

The run cuts them from its audio ring (no second capture) and hands the samples back over
its control endpoint; this client writes the file, so the run never writes where a remote
client names (docs/control.md, docs/custom-sounds.md). Torch-free.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sys
from pathlib import Path

import click
import numpy as np

from soundwatch.control.config import DEFAULT_ENDPOINT
from soundwatch.errors import SoundwatchError
from soundwatch.security.command import curve_client_options

#: What an example may be saved as, by the file's suffix: soundfile format and subtype.
EXAMPLE_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16")}


def example_format(out: Path) -> tuple[str, str]:
    """The format ``out``'s suffix asks for, or a clear error."""
    found = EXAMPLE_FORMATS.get(out.suffix.lower())
    if found is None:
        raise SoundwatchError(
            f"{out} must end in .wav or .flac (the format is taken from the suffix)"
        )
    return found


def write_example(out: Path, reply: object) -> dict[str, object]:
    """Write the control command's reply as ``out`` (atomically); return what was written."""
    not_audio = SoundwatchError(
        "the run's answer to record is not audio: are soundwatch and the run the same version?"
    )
    if not isinstance(reply, dict):
        raise not_audio
    try:
        samples = np.frombuffer(base64.b64decode(reply["samples"], validate=True), dtype="<f4")
        rate, t_start = int(reply["rate"]), float(reply["t_start"])
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise not_audio from None
    file_format, subtype = example_format(out)
    partial = out.with_name(out.name + ".part")
    import soundfile as sf

    sf.write(partial, samples, rate, format=file_format, subtype=subtype)
    os.replace(partial, out)
    return {
        "path": str(out),
        "stream": reply.get("stream"),
        "seconds": len(samples) / rate,
        "rate": rate,
        "t_start": t_start,
        "t_end": t_start + len(samples) / rate,
    }


@click.command("record")
@click.option("--stream", "stream", required=True, help="the live stream's id")
@click.option(
    "--seconds", type=click.FloatRange(min=0, min_open=True), required=True, help="how long"
)
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--endpoint",
    default=DEFAULT_ENDPOINT,
    show_default=True,
    help="the control endpoint of soundwatch run --control",
)
@click.option("--timeout", type=float, default=10.0, show_default=True, help="seconds to wait")
@curve_client_options
def record(
    stream: str,
    seconds: float,
    out: Path,
    endpoint: str,
    timeout: float,
    curve_secret: Path | None,
    curve_server: Path | None,
) -> None:
    """Save the last SECONDS of a running stream as OUT (.wav or .flac, 32 kHz mono), an
    example for soundwatch learn. Needs soundwatch run --control."""
    from soundwatch.control.client import request
    from soundwatch.security.curve import CurveClient

    try:
        example_format(out)  # before asking: a wrong suffix costs nothing
        curve = CurveClient.from_options(curve_secret, curve_server)
        reply = request(
            endpoint, "record", timeout=timeout, curve=curve, stream=stream, seconds=seconds
        )
        written = write_example(out, reply)
    except SoundwatchError as error:
        click.echo(f"soundwatch: error: {error}", err=True)
        sys.exit(1)
    click.echo(json.dumps(written, sort_keys=True))

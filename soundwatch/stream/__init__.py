"""Capture stage: sources that yield 32 kHz mono float32 blocks with capture timestamps.

``open_source(id, spec)`` builds a source from a ``[ID=]SPEC`` string (see ``spec``):
a microphone (PortAudio), an audio file, raw PCM on stdin, or synthetic demo audio.
Every source converts to mono (mean of channels) and resamples to 32 kHz with a streaming
resampler equal to ``torchaudio.functional.resample``; ``read_audio_file`` decodes a whole
file through the same path.
"""

from __future__ import annotations

from soundwatch.errors import SoundwatchError
from soundwatch.stream.base import AudioBlock, RingSource, Source, SourceStats
from soundwatch.stream.decode import read_audio_file
from soundwatch.stream.devices import DeviceInfo, find_input_device, list_input_devices
from soundwatch.stream.file import FileSource
from soundwatch.stream.pcm import PcmFormat, PcmSource
from soundwatch.stream.resample import TARGET_RATE, StreamingResampler, downmix
from soundwatch.stream.spec import (
    VALID_FORMS,
    SourceSpec,
    parse_source_arg,
    parse_source_spec,
)
from soundwatch.stream.synthetic import SyntheticSource

#: Allowed ranges of the integer options a SPEC may carry (``mic:USB?rate=48000``).
OPTION_RANGES: dict[str, tuple[int, int]] = {
    "channels": (1, 64),
    "rate": (8000, 384000),
    "blocksize": (16, 65536),
    "seed": (0, 2**32 - 1),
}


def check_source_spec(spec: str) -> SourceSpec:
    """Parse and validate a SPEC completely, options included, without opening anything
    (``config check`` and the config loader use it); a clear error when it is invalid."""
    parsed = parse_source_spec(spec)
    for name, (low, high) in OPTION_RANGES.items():
        value = parsed.int_option(name)
        if value is not None and not low <= value <= high:
            raise SoundwatchError(
                f"option {name}={value} of source {spec!r} is out of range ({low} to {high})"
            )
    if parsed.kind == "pcm":
        _pcm_format(parsed)
    return parsed


def _pcm_format(parsed: SourceSpec) -> PcmFormat:
    return PcmFormat(
        rate=parsed.int_option("rate") or PcmFormat.rate,
        channels=parsed.int_option("channels") or PcmFormat.channels,
        format=parsed.options.get("format", PcmFormat.format),
    )


def open_source(
    stream_id: str,
    spec: str,
    *,
    pace: str = "realtime",
    loop: bool = False,
    channels: int | None = None,
    samplerate: int | None = None,
    blocksize: int | None = None,
    ring_seconds: float = 10.0,
) -> Source:
    """Build (not start) the source for ``spec``.

    ``pace`` and ``loop`` apply to files (``pace`` also to ``synthetic``); ``channels``,
    ``samplerate`` and ``blocksize`` to microphones, where options in the spec itself
    (``mic:USB?channels=2&rate=48000&blocksize=960``) take precedence; ``ring_seconds`` is
    the capacity of the capture ring of microphones and PCM streams.
    """
    parsed = check_source_spec(spec)
    if parsed.kind == "mic":
        from soundwatch.stream.microphone import MicrophoneSource

        device: str | int | None = parsed.target
        return MicrophoneSource(
            stream_id,
            device,
            channels=parsed.int_option("channels") or channels,
            samplerate=parsed.int_option("rate") or samplerate,
            blocksize=parsed.int_option("blocksize") or blocksize,
            ring_seconds=ring_seconds,
        )
    if parsed.kind == "file":
        assert parsed.target is not None
        return FileSource(stream_id, parsed.target, pace=pace, loop=loop)
    if parsed.kind == "pcm":
        assert parsed.target is not None
        path = None if parsed.target == "-" else parsed.target
        return PcmSource(stream_id, _pcm_format(parsed), path=path, ring_seconds=ring_seconds)
    if parsed.kind == "synthetic":
        return SyntheticSource(stream_id, seed=parsed.int_option("seed") or 0, pace=pace)
    raise SoundwatchError(f"unknown source {spec!r}; {VALID_FORMS}")  # pragma: no cover


__all__ = [
    "TARGET_RATE",
    "VALID_FORMS",
    "AudioBlock",
    "DeviceInfo",
    "FileSource",
    "PcmFormat",
    "PcmSource",
    "RingSource",
    "Source",
    "SourceSpec",
    "SourceStats",
    "StreamingResampler",
    "SyntheticSource",
    "check_source_spec",
    "downmix",
    "find_input_device",
    "list_input_devices",
    "open_source",
    "parse_source_arg",
    "parse_source_spec",
    "read_audio_file",
]

"""Bad audio input (table-driven): each file is refused with a message naming the problem
and the fix, through both the file source (``run --source file:``) and ``tag``'s decoder.

Already covered elsewhere: a corrupt RIFF header, text named .flac, a missing file and a
directory (test_stream_file.py), an empty file, a PCM pipe that stops mid-sample
(test_stream_pcm.py) and NaN/Inf samples (test_pipeline.py, test_frontend.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile

from soundwatch.errors import SoundwatchError
from soundwatch.stream import open_source, read_audio_file


def wav_at(rate: int) -> Callable[[Path], Path]:
    def make(directory: Path) -> Path:
        path = directory / f"rate{rate}.wav"
        soundfile.write(path, np.zeros(1000, np.float32), rate)
        return path

    return make


def written(name: str, data: Callable[[], bytes]) -> Callable[[Path], Path]:
    def make(directory: Path) -> Path:
        path = directory / name
        path.write_bytes(data())
        return path

    return make


def wav_header_only() -> bytes:
    return b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x00\x7d\x00\x00"


BAD_AUDIO = {
    # name: (file maker, substrings the one error message must contain)
    "1 Hz header": (wav_at(1), ["sample rate is 1 Hz", "8000 to 384000", "ffmpeg"]),
    "7999 Hz": (wav_at(7999), ["7999 Hz", "-ar 32000"]),
    "absurdly fast": (wav_at(2_000_000_000), ["2000000000 Hz", "header is damaged"]),
    "zero bytes": (written("empty.wav", lambda: b""), ["empty.wav", "corrupt or not a supported"]),
    "header, no data chunk": (written("cut.wav", wav_header_only), ["cut.wav", "convert it"]),
    "random bytes": (
        written("noise.wav", lambda: random.Random(7).randbytes(4096)),
        ["noise.wav", "corrupt or not a supported"],
    ),
    "a PNG named .ogg": (
        written("photo.ogg", lambda: b"\x89PNG\r\n\x1a\n" + bytes(200)),
        ["photo.ogg", "corrupt or not a supported"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_AUDIO))
def test_bad_audio_files_are_refused_clearly(case: str, tmp_path: Path) -> None:
    make, expected = BAD_AUDIO[case]
    path = make(tmp_path)
    for attempt in (
        lambda: read_audio_file(path),
        lambda: open_source("x", f"file:{path}", pace="fast").start(),
    ):
        with pytest.raises(SoundwatchError) as caught:
            attempt()
        for part in expected:
            assert part in str(caught.value), f"{part!r} missing from: {caught.value}"


def test_a_truncated_file_gives_the_audio_it_holds(tmp_path: Path) -> None:
    """A WAV cut short (a copy interrupted): the whole frames present are tagged, the
    missing rest is simply not there; nothing is invented or repeated."""
    path = tmp_path / "whole.wav"
    tone = np.sin(np.arange(32000) / 10).astype(np.float32) * 0.5
    soundfile.write(path, tone, 32000, subtype="PCM_16")
    data = path.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: 44 + 2 * 12000 + 1])  # 12,000 frames and half of the next
    samples, rate = read_audio_file(cut)
    assert rate == 32000 and len(samples) == 12000
    np.testing.assert_allclose(samples, tone[:12000], atol=1 / 16384)

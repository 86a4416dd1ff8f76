"""Audio file decoding (soundfile) to 32 kHz mono, shared by ``tag FILE`` and the file source.

``iter_resampled`` is the one decode path: fixed-size native blocks, downmix, the streaming
resampler, its flush at the end. ``read_audio_file`` concatenates it, and ``FileSource`` in
fast mode returns its blocks one by one, so both give bit-identical samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import soundfile

from soundwatch.errors import SoundwatchError
from soundwatch.stream.resample import TARGET_RATE, StreamingResampler, downmix

#: Native frames decoded per step (the same for every caller, so results are identical).
DECODE_BLOCK_FRAMES = 32768
#: Sample rates a file may have: those a source spec's ``rate=`` allows. A header claiming
#: 1 Hz would turn 1,000 samples into 1,000 s of audio; 2 GHz into one sample.
FILE_RATES = (8000, 384000)


def _corrupt(path: Path, error: Exception) -> SoundwatchError:
    return SoundwatchError(
        f"cannot decode audio file {str(path)!r}: it is corrupt or not a supported format "
        f"(WAV, FLAC, OGG/Vorbis, MP3 and the other formats libsndfile reads; convert it "
        f"with e.g. ffmpeg -i INPUT OUTPUT.wav) ({error})"
    )


def open_sound_file(path: str | Path) -> soundfile.SoundFile:
    """Open ``path`` for reading; a clear ``SoundwatchError`` when missing or undecodable."""
    path = Path(path)
    if not path.exists():
        raise SoundwatchError(f"audio file not found: {str(path)!r}")
    if path.is_dir():
        raise SoundwatchError(f"{str(path)!r} is a directory, not an audio file")
    try:
        audio = soundfile.SoundFile(str(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        raise _corrupt(path, error) from None
    low, high = FILE_RATES
    if not low <= audio.samplerate <= high:
        audio.close()
        raise SoundwatchError(
            f"audio file {str(path)!r} says its sample rate is {audio.samplerate} Hz, outside "
            f"the {low} to {high} Hz soundwatch reads: the header is damaged, or resample it "
            "with e.g. ffmpeg -i INPUT -ar 32000 OUTPUT.wav"
        )
    return audio


def iter_native_blocks(
    path: str | Path, *, loop: bool = False, block_frames: int = DECODE_BLOCK_FRAMES
) -> Iterator[np.ndarray]:
    """Mono float32 blocks at the file's own rate; with ``loop`` it restarts seamlessly."""
    path = Path(path)
    with open_sound_file(path) as audio:
        if loop and audio.frames == 0:
            raise SoundwatchError(f"cannot loop {str(path)!r}: the file has no audio")
        while True:
            try:
                frames = audio.read(block_frames, dtype="float32", always_2d=True)
            except (soundfile.LibsndfileError, RuntimeError) as error:
                raise _corrupt(path, error) from None
            if len(frames):
                yield downmix(frames)
            if len(frames) < block_frames:
                if not loop:
                    return
                audio.seek(0)


def iter_resampled(
    path: str | Path,
    *,
    loop: bool = False,
    block_frames: int = DECODE_BLOCK_FRAMES,
    on_decoded: Callable[[int], None] | None = None,
) -> Iterator[np.ndarray]:
    """32 kHz mono float32 blocks of the file (never empty); ends with the resampler's tail.

    ``on_decoded(n)`` is called with the number of native frames of each decoded block.
    """
    with open_sound_file(path) as audio:
        rate = audio.samplerate
    resampler = StreamingResampler(rate, TARGET_RATE)
    for block in iter_native_blocks(path, loop=loop, block_frames=block_frames):
        if on_decoded is not None:
            on_decoded(len(block))
        out = resampler.process(block)
        if len(out):
            yield out
    tail = resampler.flush()
    if len(tail):
        yield tail


def audio_file_info(path: str | Path) -> tuple[int, int, int]:
    """``(sample rate, channels, frames)`` of an audio file."""
    with open_sound_file(path) as audio:
        return audio.samplerate, audio.channels, audio.frames


def read_audio_file(path: str | Path) -> tuple[np.ndarray, int]:
    """The whole file as 32 kHz mono float32 and its original sample rate.

    Exactly the concatenation of what ``FileSource(pace="fast")`` returns for the file.
    """
    rate, _, _ = audio_file_info(path)
    blocks = list(iter_resampled(path))
    samples = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
    return samples, rate

"""Window embeddings of whole recordings, placed exactly as the live pipeline places windows.

What ``soundwatch embed`` writes and what ``soundwatch learn`` fits heads on: the log-mel
frontend, the pipeline's :class:`~soundwatch.dsp.windows.MelWindower` and the backbone's
batched inference, so a head learned here sees the same windows it will see live.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soundwatch.dsp import logmel
from soundwatch.dsp.windows import FRAMES_PER_SECOND, MelWindower, seconds_to_frames
from soundwatch.errors import SoundwatchError
from soundwatch.stream.decode import read_audio_file

Infer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
BATCH = 32
MIN_SAMPLES = 640  # two frames: anything shorter holds no sound worth learning


@dataclass
class WindowOutputs:
    """One recording's windows: frames ``[start, stop)``, probabilities and embeddings."""

    starts: np.ndarray  # [N] int64
    stops: np.ndarray  # [N] int64
    probs: np.ndarray  # [N, classes] float32
    embeddings: np.ndarray  # [N, D] float32

    @property
    def times(self) -> np.ndarray:
        """``[N, 2]`` window start and end in seconds from the recording's start."""
        return np.stack([self.starts, self.stops], axis=1) / FRAMES_PER_SECOND


def read_wave(path: str | Path) -> np.ndarray:
    """A file as 32 kHz mono float32; refuses files too short to hold a sound."""
    wave, _ = read_audio_file(path)
    if len(wave) < MIN_SAMPLES:
        raise SoundwatchError(
            f"{str(path)!r} holds {len(wave) / 32000:.3f} s of audio; record at least 0.1 s"
        )
    return wave


def mel_windows(wave: np.ndarray, window_s: float, hop_s: float) -> tuple[list, np.ndarray]:
    """The pipeline's windows of ``wave`` (``MelWindow`` objects) and their mel arrays."""
    windower = MelWindower(seconds_to_frames(window_s), seconds_to_frames(hop_s))
    windows = windower.push(logmel(np.ascontiguousarray(wave, dtype=np.float32)))
    windows += windower.flush()
    return windows, [w.mel for w in windows]


def infer_windows(
    mels: Sequence[np.ndarray], infer: Infer, num_classes: int, dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Run windows (any mix of lengths) in batches of equal length; outputs in input order."""
    probs = np.zeros((len(mels), num_classes), dtype=np.float32)
    embeddings = np.zeros((len(mels), dim), dtype=np.float32)
    by_length: dict[int, list[int]] = {}
    for i, mel in enumerate(mels):
        by_length.setdefault(mel.shape[1], []).append(i)
    for indices in by_length.values():
        for lo in range(0, len(indices), BATCH):
            chunk = indices[lo : lo + BATCH]
            p, e = infer(np.stack([mels[i] for i in chunk]))
            probs[chunk] = p
            embeddings[chunk] = e
    return probs, embeddings


def wave_outputs(
    wave: np.ndarray, infer: Infer, num_classes: int, dim: int, window_s: float, hop_s: float
) -> WindowOutputs:
    """Windows of a waveform with their probabilities and embeddings."""
    windows, mels = mel_windows(wave, window_s, hop_s)
    probs, embeddings = infer_windows(mels, infer, num_classes, dim)
    starts = np.array([w.start for w in windows], dtype=np.int64)
    stops = np.array([w.stop for w in windows], dtype=np.int64)
    return WindowOutputs(starts, stops, probs, embeddings)

"""Sliding analysis windows as slices of a per-stream ring of mel frames.

Every mel frame is computed once by the streaming frontend and appended here; a window of
``window_frames`` frames is due every ``hop_frames`` frames and is a copy of a slice of the
ring, so nothing is recomputed however much windows overlap. The same windower serves the
live pipeline and offline tagging, so both see exactly the same windows.

Window placement, in frames of 10 ms (frame ``i`` is centred on sample ``i * 320``):
windows start at frames ``0, hop, 2*hop, ...`` and are due once their last frame exists.
A ``phase`` (``0 <= phase < hop``) delays every window after the first by ``phase``
frames (``0, phase + hop, phase + 2*hop, ...``): streams started together then fall due
at different moments of the hop instead of all at once (the pipeline's ``stagger``).
When the stream ends, a stream shorter than one window gets one window of all its frames,
and a tail not covered by the last regular window gets one final window ending at the last
frame, so the end of a file is always tagged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from soundwatch.errors import SoundwatchError
from soundwatch.validation import check_hop_within_window

FRAMES_PER_SECOND = 100  # 32 kHz audio, hop 320 samples


@dataclass(frozen=True)
class MelWindow:
    """One analysis window: ``mel`` is ``[n_mels, frames]``; frames ``[start, stop)``."""

    start: int
    stop: int
    mel: np.ndarray
    final: bool = False  # the stream ended with this window


def seconds_to_frames(seconds: float) -> int:
    """Frames of 10 ms in ``seconds`` (at least one)."""
    return max(1, round(seconds * FRAMES_PER_SECOND))


class MelWindower:
    """Collect mel frames of one stream and cut them into overlapping windows.

    The ring holds the last ``window_frames + hop_frames`` frames (bounded memory); the
    frame counter keeps counting so windows carry absolute frame indices.
    """

    def __init__(
        self, window_frames: int, hop_frames: int, n_mels: int = 128, phase_frames: int = 0
    ) -> None:
        if window_frames < 1 or hop_frames < 1:
            raise SoundwatchError("window and hop must each be at least one 10 ms frame")
        if not 0 <= phase_frames < hop_frames:
            raise SoundwatchError(f"phase must be 0 to hop - 1 frames, got {phase_frames}")
        try:
            check_hop_within_window(window_frames, hop_frames, unit="frames")
        except ValueError as error:
            raise SoundwatchError(str(error)) from None
        self.window_frames = window_frames
        self.hop_frames = hop_frames
        self.n_mels = n_mels
        self.phase_frames = phase_frames
        self._capacity = window_frames + hop_frames
        self._ring = np.zeros((n_mels, self._capacity), dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        """Forget all frames: the next frame pushed is frame 0 of a new stream."""
        self.frames_seen = 0
        self._next_start = 0
        self._phase_due = self.phase_frames  # added once, after the first window
        self._last_stop = 0

    def push(self, frames: np.ndarray) -> list[MelWindow]:
        """Append ``[n_mels, k]`` frames; return the windows they complete, oldest first."""
        if frames.ndim != 2 or frames.shape[0] != self.n_mels:
            raise SoundwatchError(
                f"mel frames must have shape [{self.n_mels}, k], got {list(frames.shape)}"
            )
        windows: list[MelWindow] = []
        done = 0
        total = frames.shape[1]
        while done < total:
            # Copy up to the next due window's end, so the ring never overwrites its frames.
            due_at = self._next_start + self.window_frames
            take = min(total - done, max(1, due_at - self.frames_seen), self._capacity)
            self._write(frames[:, done : done + take])
            done += take
            while self.frames_seen >= self._next_start + self.window_frames:
                start = self._next_start
                windows.append(self._window(start, start + self.window_frames))
                self._next_start += self.hop_frames + self._phase_due
                self._phase_due = 0
        return windows

    def flush(self) -> list[MelWindow]:
        """End the stream: return a last window covering any untagged tail (or the whole
        stream if it was shorter than one window), marked ``final``."""
        windows: list[MelWindow] = []
        if self.frames_seen > self._last_stop:
            start = max(0, self.frames_seen - self.window_frames)
            windows.append(self._window(start, self.frames_seen, final=True))
        self.reset()
        return windows

    def _write(self, frames: np.ndarray) -> None:
        k = frames.shape[1]
        pos = self.frames_seen % self._capacity
        first = min(k, self._capacity - pos)
        self._ring[:, pos : pos + first] = frames[:, :first]
        if first < k:
            self._ring[:, : k - first] = frames[:, first:]
        self.frames_seen += k

    def _window(self, start: int, stop: int, final: bool = False) -> MelWindow:
        lo = start % self._capacity
        if lo + (stop - start) <= self._capacity:
            mel = self._ring[:, lo : lo + (stop - start)].copy()
        else:  # the window wraps around the end of the ring
            mel = self._ring[:, np.arange(start, stop) % self._capacity]
        self._last_stop = max(self._last_stop, stop)
        return MelWindow(start=start, stop=stop, mel=mel, final=final)

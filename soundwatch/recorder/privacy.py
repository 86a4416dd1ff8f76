"""Privacy: whether speech was heard during a clip, from the tagger's speech classes.

The recorder keeps each stream's recent tag windows as (start, end, speech score), the
score being the highest probability among the AudioSet speech classes. A clip holds speech
when a window overlapping it by at least half (of the window, or of the clip when that is
shorter) reaches ``recorder.speech_threshold``. The tagger already computes these
probabilities for every window, so this costs nothing; docs/history.md has the
measurement (``benchmarks/privacy_speech.py``).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence

import numpy as np

from soundwatch.errors import SoundwatchError

#: The AudioSet classes that mean someone is talking (the Speech subtree and whispering).
SPEECH_LABELS = (
    "Speech",
    "Male speech, man speaking",
    "Female speech, woman speaking",
    "Child speech, kid speaking",
    "Conversation",
    "Narration, monologue",
    "Babbling",
    "Speech synthesizer",
    "Whispering",
)


def speech_indices(labels: Sequence[str]) -> np.ndarray:
    """Indices of :data:`SPEECH_LABELS` in the model's labels."""
    found = [i for i, label in enumerate(labels) if label in SPEECH_LABELS]
    if not found:
        raise SoundwatchError(
            "the model has none of the AudioSet speech classes, so recorder.privacy: "
            "drop_speech cannot tell speech; use an AudioSet model or privacy: keep_all/no_clips"
        )
    return np.asarray(found, dtype=np.int64)


class SpeechTrack:
    """One stream's recent windows and their speech scores (written by the inference
    thread, read by the recorder's writer thread)."""

    def __init__(self, max_windows: int) -> None:
        self._windows: deque[tuple[float, float, float]] = deque(maxlen=max_windows)
        self._lock = threading.Lock()
        self.known_until = float("-inf")  # end of the last window seen

    def add(self, t_start: float, t_end: float, score: float) -> None:
        with self._lock:
            self._windows.append((t_start, t_end, score))
            self.known_until = max(self.known_until, t_end)

    def score(self, t_from: float, t_to: float) -> float:
        """The highest speech score of the windows over ``[t_from, t_to)`` (0 if none)."""
        span = t_to - t_from
        best = 0.0
        with self._lock:
            for start, end, value in self._windows:
                overlap = min(end, t_to) - max(start, t_from)
                if overlap > 0 and overlap >= 0.5 * min(end - start, span):
                    best = max(best, value)
        return best

"""Real-time pacing for sources that could produce audio faster than real time.

A file or the synthetic demo, played at ``pace="realtime"``, must behave like a microphone:
samples become available as wall-clock time passes since ``start()``. ``RealtimePacer``
holds that clock for both, so they release audio by the same rule.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from soundwatch.stream.resample import TARGET_RATE


class RealtimePacer:
    """Releases samples at ``rate`` per wall-clock second since ``start()``.

    ``next_release`` waits until at least ``MIN_RELEASE_SECONDS`` of audio is due and returns
    at most ``MAX_RELEASE_SECONDS`` of it; a source's short last piece is released at once.
    """

    MIN_RELEASE_SECONDS = 0.01
    MAX_RELEASE_SECONDS = 0.5

    def __init__(self, rate: int = TARGET_RATE) -> None:
        self.rate = int(rate)
        self.t_mono = 0.0
        self._min = max(1, int(self.MIN_RELEASE_SECONDS * self.rate))
        self._max = max(self._min, int(self.MAX_RELEASE_SECONDS * self.rate))

    def start(self) -> None:
        """Sample 0 is due now."""
        self.t_mono = time.monotonic()

    def ingest_time(self, released: int) -> float:
        """``time.monotonic()`` at which the first ``released`` samples were all due."""
        return self.t_mono + released / self.rate

    def next_release(self, released: int, available: Callable[[int], int], timeout: float) -> int:
        """How many samples to release after the first ``released``; 0 if none within
        ``timeout`` seconds or the source has nothing more.

        ``available(want)`` returns how many of the next ``want`` samples the source can give
        (fewer only at its end).
        """
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            due = min(int((time.monotonic() - self.t_mono) * self.rate) - released, self._max)
            if due > 0:
                n = available(due)
                if n >= self._min or 0 < n < due:
                    return n
                if n < due:  # nothing more will come
                    return 0
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return 0
            wake = self.ingest_time(released + self._min)
            time.sleep(max(0.0, min(wake - time.monotonic(), remaining)))

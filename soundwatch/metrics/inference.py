"""Inference batch sizes and forward-pass times, counted around the model call.

Cumulative counts in Prometheus histogram form (``le`` bucket bounds), read by the live
publisher into every status message's ``inference`` field; numpy-free and cheap (two clock
reads and a few additions per forward pass).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from typing import Any

#: Bucket upper bounds: windows per forward pass, and seconds per forward pass.
BATCH_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128)
SECONDS_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class InferenceStats:
    """Wraps an ``infer(mels)`` callable and counts its batches and their durations."""

    def __init__(self, infer: Callable[[Any], Any]) -> None:
        self._infer = infer
        self._lock = threading.Lock()
        self.passes = 0
        self.windows = 0
        self.seconds = 0.0
        self._batch = [0] * (len(BATCH_BOUNDS) + 1)  # per bucket, the last is +Inf
        self._time = [0] * (len(SECONDS_BOUNDS) + 1)

    def infer(self, mels: Any) -> Any:
        start = time.perf_counter()
        result = self._infer(mels)
        elapsed = time.perf_counter() - start
        size = len(mels)
        with self._lock:
            self.passes += 1
            self.windows += size
            self.seconds += elapsed
            self._batch[bisect.bisect_left(BATCH_BOUNDS, size)] += 1
            self._time[bisect.bisect_left(SECONDS_BOUNDS, elapsed)] += 1
        return result

    def snapshot(self) -> dict[str, float]:
        """``passes``, ``windows``, ``seconds`` and cumulative ``batch_le_B`` and
        ``seconds_le_S`` counts (``inf`` for the last bucket), as status carries them."""
        with self._lock:
            out: dict[str, float] = {
                "passes": self.passes,
                "windows": self.windows,
                "seconds": round(self.seconds, 6),
            }
            for prefix, bounds, counts in (
                ("batch_le_", BATCH_BOUNDS, self._batch),
                ("seconds_le_", SECONDS_BOUNDS, self._time),
            ):
                total = 0
                for bound, count in zip((*bounds, "inf"), counts, strict=True):
                    total += count
                    out[f"{prefix}{bound}"] = total
        return out

"""Smoothed tag probabilities: each class of a stream smoothed across its windows.

Raw per-window probabilities jump from one window to the next; a subscriber showing the
top labels, or acting on a class, wants them steadied. Causal, so it adds no delay beyond
its own lag:

- ``ema``: ``s_n = s_{n-1} + a (p_n - s_{n-1})`` with ``a = 1 - exp(-hop / width)`` (a time
  constant of ``width`` seconds whatever the hop), starting at the first window;
- ``median``: the median of the last ``round(width / hop)`` windows (at least one);
- ``none``: the window's own probabilities.

``docs/protocol.md`` says why the default is what it is (measured with
``benchmarks/smoothing.py``).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

SMOOTHING_METHODS = ("ema", "median", "none")


class TagSmoother:
    """One stream's smoothing state; :meth:`reset` when the stream's audio restarts."""

    def __init__(self, method: str, width_s: float, hop_s: float) -> None:
        if method not in SMOOTHING_METHODS:
            raise ValueError(f"unknown smoothing method {method!r}; use one of {SMOOTHING_METHODS}")
        self.method = method
        self.alpha = np.float32(1.0 - math.exp(-hop_s / width_s)) if method == "ema" else None
        self._history: deque[np.ndarray] = deque(maxlen=max(1, round(width_s / hop_s)))
        self._state: np.ndarray | None = None

    def reset(self) -> None:
        self._history.clear()
        self._state = None

    def push(self, probs: np.ndarray) -> np.ndarray:
        """The smoothed probabilities after this window (a new array; ``probs`` untouched)."""
        probs = np.asarray(probs, dtype=np.float32)
        if self.method == "none":
            return probs
        if self.method == "ema":
            if self._state is None:
                self._state = probs.copy()
            else:
                self._state += self.alpha * (probs - self._state)
            return self._state.copy()
        self._history.append(probs)
        if len(self._history) == 1:
            return probs.copy()
        return np.median(np.stack(self._history), axis=0).astype(np.float32)

"""Per-group smoothing of step scores over time: none, a centred median, or an EMA.

- ``median``: step ``k`` becomes the median of steps ``k - h .. k + h`` (fewer at the ends
  of a stream), ``2h + 1`` steps spanning ``width`` seconds. It removes blips shorter than
  ``h`` steps without moving edges, at the cost of ``h`` steps of latency.
- ``ema``: ``s_k = s_{k-1} + a (x_k - s_{k-1})`` with ``a = 1 - exp(-step / width)``,
  starting at ``s_0 = x_0``. Causal (no latency) but it delays rises and falls.

``Smoother`` is the streaming form; :func:`smooth` the offline one. Both give the same
numbers for the same steps.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np


def median_half_width(width_s: float, step_s: float) -> int:
    """``h`` of a centred median spanning about ``width_s`` seconds of ``step_s`` steps."""
    return max(0, round(width_s / step_s) // 2)


def ema_alpha(width_s: float, step_s: float) -> float:
    return 1.0 - math.exp(-step_s / width_s)


def smooth(values: np.ndarray, method: str, width_s: float, step_s: float) -> np.ndarray:
    """Smooth ``[K, G]`` step scores along time (the whole recording at once)."""
    if method == "none" or len(values) == 0:
        return values.astype(np.float32)
    if method == "median":
        h = median_half_width(width_s, step_s)
        out = np.empty_like(values, dtype=np.float32)
        for k in range(len(values)):
            out[k] = np.median(values[max(0, k - h) : k + h + 1], axis=0)
        return out
    if method == "ema":
        a = np.float32(ema_alpha(width_s, step_s))
        out = np.empty_like(values, dtype=np.float32)
        state = values[0].astype(np.float32)
        for k in range(len(values)):
            if k:
                state = (state + a * (values[k] - state)).astype(np.float32)
            out[k] = state
        return out
    raise ValueError(f"unknown smoothing method {method!r}")


class Smoother:
    """Streaming :func:`smooth`: push steps in order, get smoothed steps as they are final."""

    def __init__(self, method: str, width_s: float, step_s: float) -> None:
        if method not in ("none", "median", "ema"):
            raise ValueError(f"unknown smoothing method {method!r}")
        self.method = method
        self.half = median_half_width(width_s, step_s) if method == "median" else 0
        self.alpha = np.float32(ema_alpha(width_s, step_s)) if method == "ema" else None
        self.reset()

    @property
    def latency_steps(self) -> int:
        """Steps a value waits before its smoothed value is out (median: ``h``)."""
        return self.half

    def reset(self) -> None:
        self._history: deque[np.ndarray] = deque(maxlen=2 * self.half + 1)
        self._first_index = 0  # step index of _history[0]
        self._pushed = 0
        self._emitted = 0
        self._state: np.ndarray | None = None

    def push(self, k: int, value: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Add step ``k`` (steps come in order from 0); return the steps now smoothed."""
        if self.method == "none":
            return [(k, value)]
        if self.method == "ema":
            if self._state is None:
                self._state = value.astype(np.float32)
            else:
                self._state = (self._state + self.alpha * (value - self._state)).astype(np.float32)
            return [(k, self._state)]
        if len(self._history) == self._history.maxlen:
            self._first_index += 1
        self._history.append(value)
        self._pushed = k + 1
        out = []
        while self._emitted + self.half < self._pushed:
            out.append(self._median_at(self._emitted))
            self._emitted += 1
        return out

    def finish(self) -> list[tuple[int, np.ndarray]]:
        """The stream ended: the last ``h`` medians, over the steps that exist."""
        out = []
        if self.method == "median":
            while self._emitted < self._pushed:
                out.append(self._median_at(self._emitted))
                self._emitted += 1
        return out

    def _median_at(self, k: int) -> tuple[int, np.ndarray]:
        lo = max(0, k - self.half)
        hi = min(self._pushed, k + self.half + 1)
        window = [self._history[i - self._first_index] for i in range(lo, hi)]
        return k, np.median(np.stack(window), axis=0).astype(np.float32)

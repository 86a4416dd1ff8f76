"""Window agreement: one score per group and time step from all windows covering the step.

Time is cut into steps of ``step_frames`` frames (10 ms each). A window covers step ``k``
when it holds the whole step: ``start <= k * step_frames`` and ``stop >= (k + 1) *
step_frames``. The step's score is the ``quantile`` of the covering windows' scores
(linear interpolation, as ``numpy.quantile``): with ``quantile = 1 - agreement``, the step
scores at least ``x`` only when a fraction ``agreement`` of its windows score ``x`` or more.
A window reaching a sound with only its edge does not decide alone, so the sound's
extent is where the windows agree rather than wherever any window heard it.

Steps no window covers (windows dropped by backpressure) score 0 and are counted.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np


def step_score(covering: np.ndarray, quantile: float) -> np.ndarray:
    """``[n_windows, G]`` scores of the windows covering one step -> ``[G]`` step score.

    Exactly ``numpy.quantile(covering, quantile, axis=0)`` (its linear interpolation, the
    same arithmetic), computed on a sort of the few windows: it runs for every window of
    every stream, and ``numpy.quantile``'s generality cost 4 times the work."""
    n = covering.shape[0]
    if n == 1:
        return covering[0].astype(np.float32)
    ordered = np.sort(covering, axis=0)
    if np.isnan(ordered[-1]).any():  # numpy's NaN rule: such a column's quantile is NaN
        return np.quantile(covering, quantile, axis=0).astype(np.float32)
    virtual = (n - 1) * quantile
    if virtual >= n - 1:
        return ordered[-1].astype(np.float32)
    below = math.floor(virtual)
    gamma = virtual - below
    a, b = ordered[below], ordered[below + 1]
    diff = b - a
    # numpy.lerp: from the nearer end, so the result stays within [a, b]
    value = b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma
    return value.astype(np.float32)


def aggregate_steps(
    starts: np.ndarray, stops: np.ndarray, scores: np.ndarray, step_frames: int, quantile: float
) -> tuple[np.ndarray, int]:
    """All windows of a recording at once -> (``[K, G]`` step scores, uncovered steps).

    ``K`` is the number of whole steps up to the last window's end.
    """
    starts = np.asarray(starts)
    stops = np.asarray(stops)
    n_steps = int(stops.max()) // step_frames if len(stops) else 0
    out = np.zeros((n_steps, scores.shape[1]), dtype=np.float32)
    uncovered = 0
    for k in range(n_steps):
        covering = (starts <= k * step_frames) & (stops >= (k + 1) * step_frames)
        if covering.any():
            out[k] = step_score(scores[covering], quantile)
        else:
            uncovered += 1
    return out, uncovered


class StepAggregator:
    """The streaming form of :func:`aggregate_steps`: windows in start order in, final
    steps out as soon as no later window can cover them.

    A step ``k`` is final once a window starting after ``k * step_frames`` arrived (later
    windows start later still). Memory: only windows that can still cover a pending step.
    """

    def __init__(self, step_frames: int, quantile: float, n_groups: int) -> None:
        self.step_frames = step_frames
        self.quantile = quantile
        self.n_groups = n_groups
        # Counted over the aggregator's life (not reset with a segment), as they happen.
        self.uncovered_steps = 0
        self.late_windows = 0  # arrived after a step they cover was already final
        self.reset()

    def reset(self) -> None:
        """Start a new segment (step 0 again); the counters keep counting."""
        self._windows: deque[tuple[int, int, np.ndarray]] = deque()
        self.next_step = 0
        self._last_start = -1
        self._max_stop = 0

    def push(self, start: int, stop: int, scores: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Add one window; return the steps it makes final as ``(k, [G] scores)``."""
        if start < self._last_start or start < self.next_step * self.step_frames:
            self.late_windows += 1
        self._last_start = max(self._last_start, start)
        self._max_stop = max(self._max_stop, stop)
        # Steps starting before this window are final (later windows start later still).
        out = self._finalize(-(-start // self.step_frames))
        self._windows.append((start, stop, scores))
        return out

    def finish(self) -> list[tuple[int, np.ndarray]]:
        """The stream ended: every remaining whole step up to the last window's end."""
        return self._finalize(self._max_stop // self.step_frames)

    def _finalize(self, limit: int) -> list[tuple[int, np.ndarray]]:
        """Steps ``next_step .. limit - 1`` (never past the last window's end).

        Consecutive steps covered by the same windows share one quantile: the covering
        sets change only at window edges (every hop), so a window typically makes several
        steps final with one computation instead of one per step. The values are the same
        array object, made read-only (nothing downstream writes to step scores).
        """
        limit = min(limit, self._max_stop // self.step_frames)
        out: list[tuple[int, np.ndarray]] = []
        first = self.next_step
        if first < limit:
            # Plain Python: a handful of windows and steps per call, where array set-up
            # cost more than the comparisons.
            sf = self.step_frames
            windows = list(self._windows)
            runs: list[tuple[tuple[int, ...], int]] = []  # (covering windows, steps)
            for k in range(first, limit):
                lo_frame, hi_frame = k * sf, (k + 1) * sf
                covering = tuple(
                    i for i, (a, b, _) in enumerate(windows) if a <= lo_frame and b >= hi_frame
                )
                if runs and runs[-1][0] == covering:
                    runs[-1] = (covering, runs[-1][1] + 1)
                else:
                    runs.append((covering, 1))
            k = first
            for covering, count in runs:
                if covering:
                    value = step_score(np.stack([windows[i][2] for i in covering]), self.quantile)
                else:
                    self.uncovered_steps += count
                    value = np.zeros(self.n_groups, dtype=np.float32)
                value.flags.writeable = False
                out.extend((k + j, value) for j in range(count))
                k += count
            self.next_step = limit
        # A window ending before the next pending step's end can cover no pending step.
        need = (self.next_step + 1) * self.step_frames
        while self._windows and self._windows[0][1] < need:
            self._windows.popleft()
        return out

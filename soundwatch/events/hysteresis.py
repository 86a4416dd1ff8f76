"""Hysteresis, gap bridging and minimum duration: smoothed step scores -> event spans.

Per group, a step is *active* when its score reaches ``on`` (or, right after an active
step, stays at or above ``off``). Active runs separated by at most ``max_gap`` inactive
steps form one event; an event spanning fewer than ``min_steps`` steps (first active step
to last, gaps included) is dropped. All in steps; the detector converts to seconds.

*Lead-in*: an event's reported start moves back over the steps just before its first
active step that score at least ``lead`` (``max(off, lead_ratio x on)``), at most
``max_lead_steps`` of them. Window agreement makes a sound cross ``on`` only once most
windows covering a step hold it, so the first active step comes late when the sound
starts softly; the steps leading up to it are the sound's start. Confirmation and the
minimum duration still count from the first active step, so the lead-in finds no new
events and announces none earlier. A lead never reaches into the group's previous event
(the step after an event's last active step scored below ``off``).

An event is *confirmed* (its start can be announced) at its first active step where it
already spans ``min_steps``, and *closed* at the first step where the gap after its last
active step exceeds ``max_gap`` (or at the end of the stream). :class:`HysteresisTracker`
works step by step; :func:`find_spans` finds the same spans in a whole recording.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Span:
    """One event of group ``group``: steps ``[start, end)``; ``confirmed_at`` is the step
    at which it was announced; ``peak`` the highest score within it."""

    group: int
    start: int
    end: int
    confirmed_at: int
    peak: float


@dataclass(frozen=True)
class Thresholds:
    """Per-group hysteresis parameters, each an array of ``G`` values (thresholds float32,
    the dtype of the scores, so every comparison is made the same way)."""

    on: np.ndarray
    off: np.ndarray
    min_steps: np.ndarray
    max_gap_steps: np.ndarray
    lead_ratio: float = 1.0  # lead-in over steps scoring >= max(off, lead_ratio x on) ...
    max_lead_steps: int = 0  # ... at most this many steps (0: no lead-in)

    def lead(self) -> np.ndarray:
        """Per group, the score the steps before an event need to count as its lead-in."""
        return np.maximum(self.off, np.float32(self.lead_ratio) * self.on).astype(np.float32)


def _active_mask(x: np.ndarray, on: np.float32, off: np.float32) -> np.ndarray:
    active = np.zeros(len(x), dtype=bool)
    state = False
    for k, v in enumerate(x):
        state = bool(v >= off) if state else bool(v >= on)
        active[k] = state
    return active


def find_spans(scores: np.ndarray, thresholds: Thresholds) -> list[Span]:
    """All events of a whole recording's ``[K, G]`` smoothed scores, in announcement order."""
    spans: list[Span] = []
    lead = thresholds.lead()
    for g in range(scores.shape[1]):
        x = scores[:, g]
        active = _active_mask(x, thresholds.on[g], thresholds.off[g])
        edges = np.diff(np.concatenate([[0], active.astype(np.int8), [0]]))
        runs = list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))
        merged: list[list[int]] = []
        for a, b in runs:
            if merged and a - merged[-1][1] <= thresholds.max_gap_steps[g]:
                merged[-1][1] = b
            else:
                merged.append([a, b])
        for a, b in merged:
            if b - a < thresholds.min_steps[g]:
                continue
            # Announced at the first active step at which the event spans min_steps.
            reach = np.flatnonzero(active[a:b])
            confirmed = a + int(reach[np.searchsorted(reach, thresholds.min_steps[g] - 1)])
            start, limit = int(a), max(0, int(a) - thresholds.max_lead_steps)
            while start > limit and x[start - 1] >= lead[g]:
                start -= 1
            spans.append(Span(g, start, int(b), confirmed, float(x[a:b].max())))
    spans.sort(key=lambda s: (s.confirmed_at, s.group))
    return spans


@dataclass
class Update:
    """A change the tracker reports: an event ``start`` (confirmed) or ``end`` (closed)."""

    state: str
    group: int
    start: int  # with the lead-in
    end: int  # steps known active so far (start) or final end (end)
    peak: float


class HysteresisTracker:
    """The streaming form of :func:`find_spans` for all groups of one stream."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.t = thresholds
        self.n_groups = len(thresholds.on)
        self.reset()

    @property
    def t(self) -> Thresholds:
        return self._t

    @t.setter
    def t(self, thresholds: Thresholds) -> None:
        """New thresholds (a runtime change) apply from the next step on."""
        self._t = thresholds
        self._lead = thresholds.lead()

    def reset(self) -> None:
        g = self.n_groups
        self._active = np.zeros(g, dtype=bool)
        self._start = np.full(g, -1, dtype=np.int64)  # -1: no open event (first active step)
        self._onset = np.zeros(g, dtype=np.int64)  # the open event's start with its lead-in
        self._lead_from = np.zeros(g, dtype=np.int64)  # first step of the run >= lead up to now
        self._fresh = True  # no step pushed since the reset: no run before the next one
        self._end = np.zeros(g, dtype=np.int64)  # one past the last active step
        self._confirmed = np.zeros(g, dtype=bool)
        self._peak = np.zeros(g, dtype=np.float32)
        self._open = 0  # groups with an open event (0: no group is active either)

    def push(self, k: int, scores: np.ndarray) -> list[Update]:
        """Step ``k`` (in order from 0) with its ``[G]`` smoothed scores -> updates.

        All groups at once (array operations); only the groups whose event starts or ends
        at this step are visited one by one, in group order. With no event open (a quiet
        room, most steps) a step that activates no group changes nothing but the lead-in's
        run: three comparisons."""
        t = self.t
        if self._fresh:
            self._lead_from[:] = k
            self._fresh = False
        if self._open:
            active = scores >= np.where(self._active, t.off, t.on)
        else:  # nothing open: nothing active, every group compares with its on threshold
            active = scores >= t.on
            if not active.any():
                self._follow_lead(k, scores)
                return []
        self._active = active
        was_open = self._start >= 0
        opened = active & ~was_open
        if opened.any():
            self._start[opened] = k
            self._onset[opened] = np.maximum(self._lead_from[opened], k - t.max_lead_steps)
            self._peak[opened] = scores[opened]
        self._follow_lead(k, scores)
        self._end[active] = k + 1
        self._peak[active] = np.maximum(self._peak[active], scores[active])
        confirm = active & ~self._confirmed & (k + 1 - self._start >= t.min_steps)
        close = was_open & ~active & (k + 1 - self._end > t.max_gap_steps)
        changed = confirm | close
        updates: list[Update] = []
        if changed.any():
            for g in np.flatnonzero(changed):
                if confirm[g]:
                    self._confirmed[g] = True
                    updates.append(self._update("start", g))
                else:
                    updates.extend(self._close(g))
        self._open = int(np.count_nonzero(self._start >= 0))
        return updates

    def push_run(self, k: int, count: int, scores: np.ndarray) -> list[Update]:
        """Steps ``k .. k + count - 1`` that all have the same ``scores`` -> exactly the
        updates of ``count`` :meth:`push` calls, with array operations for the whole run.

        Window agreement gives every step between two window edges one value (five steps
        per window at the default step and hop). After the run's first step no group
        changes state (a group above ``on`` stays above ``off``), so within the run only
        confirmations and gap closes remain, each at a step computed directly."""
        updates = self.push(k, scores)
        if count == 1:
            return updates
        last = k + count - 1
        t = self.t
        active = self._active
        if not np.array_equal(scores >= np.where(active, t.off, t.on), active):
            for j in range(k + 1, last + 1):  # thresholds with off above on: step by step
                updates.extend(self.push(j, scores))
            return updates
        self._follow_lead(last, scores)
        if not self._open:
            return updates  # a quiet run: nothing open, nothing opens
        # Confirmed at the first step j with j + 1 - start >= min_steps; closed at the first
        # step j with j + 1 - end > max_gap (end stays put while inactive).
        confirm_at = np.maximum(k + 1, self._start + t.min_steps - 1)
        confirm = active & ~self._confirmed & (confirm_at <= last)
        close_at = np.maximum(k + 1, self._end + t.max_gap_steps)
        close = (self._start >= 0) & ~active & (close_at <= last)
        changed = np.flatnonzero(confirm | close)
        if len(changed):
            at = np.where(confirm, confirm_at, close_at)[changed]
            for g in changed[np.lexsort((changed, at))]:  # step order, then group order
                if confirm[g]:
                    self._confirmed[g] = True
                    self._end[g] = confirm_at[g] + 1  # active up to the confirming step
                    updates.append(self._update("start", g))
                else:
                    updates.extend(self._close(g))
            self._open = int(np.count_nonzero(self._start >= 0))
        self._end[active] = last + 1
        return updates

    def _follow_lead(self, last: int, scores: np.ndarray) -> None:
        """The steps up to ``last`` scored ``scores``: a group below its lead level starts
        its next lead-in run after ``last``."""
        if self.t.max_lead_steps:
            below = scores < self._lead
            self._lead_from[below] = last + 1

    def finish(self) -> list[Update]:
        """The stream ended: close every open event (unconfirmed ones are dropped)."""
        updates: list[Update] = []
        for g in np.flatnonzero(self._start >= 0):
            updates.extend(self._close(g))
        self.reset()
        return updates

    def _update(self, state: str, g: int) -> Update:
        start = int(self._onset[g])
        return Update(state, int(g), start, int(self._end[g]), float(self._peak[g]))

    def _close(self, g: int) -> list[Update]:
        out = [self._update("end", g)] if self._confirmed[g] else []
        self._start[g] = -1
        self._confirmed[g] = False
        return out

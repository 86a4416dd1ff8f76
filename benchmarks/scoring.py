"""Event-based scoring: match detected events to true ones and count hits per category.

A detected event matches a true event of the same label when its onset is within
``onset_collar`` seconds of the true onset and (unless ``onset_only``) its offset within
``max(offset_collar, offset_collar_rate * true length)`` of the true offset. Each event
matches at most one event of the other side; among the allowed pairs the matching with the
most pairs is taken (augmenting paths, candidates tried nearest onset first), so the score
does not depend on the order events are listed in.

Averages: **micro** sums true positives, false positives and false negatives over all
categories before computing precision, recall and F1; **macro** averages the per-category
F1 over the categories that occur in the truth or in the detections.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from soundwatch.errors import SoundwatchError


@dataclass(frozen=True)
class LabelledEvent:
    """A sound of one category from ``onset`` to ``offset`` seconds (any common time origin)."""

    label: str
    onset: float
    offset: float


@dataclass(frozen=True)
class Collars:
    """How far a detection may be from the truth and still count."""

    onset: float = 1.0
    offset: float = 1.0
    offset_rate: float = 0.2  # offset tolerance grows to this fraction of the true length
    onset_only: bool = False

    def offset_tolerance(self, truth: LabelledEvent) -> float:
        return max(self.offset, self.offset_rate * (truth.offset - truth.onset))

    def allows(self, truth: LabelledEvent, detected: LabelledEvent) -> bool:
        if truth.label != detected.label or abs(detected.onset - truth.onset) > self.onset:
            return False
        return self.onset_only or abs(detected.offset - truth.offset) <= self.offset_tolerance(
            truth
        )


@dataclass
class Counts:
    """True positives, false positives and false negatives, plus matched onset errors."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    onset_errors: list[float] = field(default_factory=list)

    def add(self, other: Counts) -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.onset_errors.extend(other.onset_errors)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else 0.0

    @property
    def mean_onset_error(self) -> float:
        """Mean absolute onset error of the matched events (NaN when none matched)."""
        if not self.onset_errors:
            return float("nan")
        return sum(self.onset_errors) / len(self.onset_errors)


@dataclass
class Score:
    """Counts per category; micro and macro averages over them."""

    per_label: dict[str, Counts]

    @property
    def micro(self) -> Counts:
        total = Counts()
        for counts in self.per_label.values():
            total.add(counts)
        return total

    @property
    def macro_f1(self) -> float:
        if not self.per_label:
            return 0.0
        return sum(c.f1 for c in self.per_label.values()) / len(self.per_label)

    def add(self, other: Score) -> None:
        for label, counts in other.per_label.items():
            self.per_label.setdefault(label, Counts()).add(counts)


def match(
    truth: Sequence[LabelledEvent], detected: Sequence[LabelledEvent], collars: Collars
) -> list[tuple[int, int]]:
    """Pairs ``(truth index, detected index)`` of a maximum matching under ``collars``."""
    candidates: list[list[int]] = []
    for t in truth:
        allowed = [j for j, d in enumerate(detected) if collars.allows(t, d)]
        allowed.sort(key=lambda j: abs(detected[j].onset - t.onset))
        candidates.append(allowed)
    owner: dict[int, int] = {}  # detected index -> truth index

    def augment(i: int, seen: set[int]) -> bool:
        for j in candidates[i]:
            if j in seen:
                continue
            seen.add(j)
            if j not in owner or augment(owner[j], seen):
                owner[j] = i
                return True
        return False

    for i in range(len(truth)):
        augment(i, set())
    return sorted((i, j) for j, i in owner.items())


def score_events(
    truth: Iterable[LabelledEvent],
    detected: Iterable[LabelledEvent],
    collars: Collars | None = None,
) -> Score:
    """Score one recording's detections against its truth, per label."""
    collars = collars or Collars()
    truth, detected = list(truth), list(detected)
    for event in (*truth, *detected):
        if not event.offset >= event.onset:
            raise SoundwatchError(
                f"event {event} ends before it starts; give onset <= offset in seconds"
            )
    per_label: dict[str, Counts] = {}
    for label in sorted({e.label for e in truth} | {e.label for e in detected}):
        t = [e for e in truth if e.label == label]
        d = [e for e in detected if e.label == label]
        pairs = match(t, d, collars)
        per_label[label] = Counts(
            tp=len(pairs),
            fp=len(d) - len(pairs),
            fn=len(t) - len(pairs),
            onset_errors=[abs(d[j].onset - t[i].onset) for i, j in pairs],
        )
    return Score(per_label)

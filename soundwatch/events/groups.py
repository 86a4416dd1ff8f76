"""Event groups: named sets of model classes whose scores are pooled into one event label.

A group names AudioSet classes directly (``labels``: display names or ``/m/...`` ids)
and/or whole ontology subtrees (``subtrees``: a node and every node below it, e.g. ``Dog``
brings Bark, Yip, Howl, Bow-wow, Growling and Whimper (dog)). A group's score in a window is
the highest probability among its classes, or, for a *calibrated* group (``weights`` and
``bias``, learned from tuning scenes by ``benchmarks/events.py``), the logistic
``sigmoid(bias + sum_i weight_i * logit(p_i) + max_weight * max_i logit(p_i))`` of its
classes' probabilities (``max_weight`` 0 unless given). With no
groups configured, every class of the model is its own group, named by its display name.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from soundwatch.errors import SoundwatchError
from soundwatch.labels import read_ontology


@dataclass(frozen=True)
class Group:
    """One event label and the model output indices it pools."""

    name: str
    indices: tuple[int, ...]
    weights: tuple[float, ...] | None = None  # calibrated: one per index, with bias
    bias: float = 0.0
    max_weight: float = 0.0  # calibrated: weight of the highest logit among the classes


def _lookup_table(labels: Sequence[str], mids: Sequence[str]) -> dict[str, int]:
    table: dict[str, int] = {}
    for index, (name, mid) in enumerate(zip(labels, mids, strict=True)):
        table[name.lower()] = index
        table[mid.lower()] = index
    return table


def _unknown(kind: str, name: str, group: str, choices: Sequence[str]) -> SoundwatchError:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return SoundwatchError(
        f"events.groups.{group}: unknown {kind} {name!r}{hint} Use an AudioSet display name "
        "as in class_labels_indices.csv (or its /m/... id)"
    )


def ontology_subtree(ontology: Mapping[str, Mapping[str, Any]], root: str) -> list[str]:
    """The ids of ``root`` (an ontology node id) and of every node below it."""
    seen: list[str] = []
    pending = [root]
    while pending:
        node_id = pending.pop()
        if node_id in seen:
            continue
        seen.append(node_id)
        pending.extend(reversed(ontology.get(node_id, {}).get("child_ids", [])))
    return seen


def resolve_groups(
    specs: Mapping[str, Any],
    labels: Sequence[str],
    mids: Sequence[str],
    ontology: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Group]:
    """Turn group specs (objects with ``labels`` and ``subtrees`` lists) into class indices.

    Unknown names fail with the closest matches. ``subtrees`` needs ``ontology`` (node id ->
    node, see :func:`soundwatch.labels.read_ontology`).
    """
    if not specs:
        return [Group(name, (i,)) for i, name in enumerate(labels)]
    table = _lookup_table(labels, mids)
    node_by_name: dict[str, str] = {}
    if ontology is not None:
        for node_id, node in ontology.items():
            node_by_name[str(node["name"]).lower()] = node_id
            node_by_name[node_id.lower()] = node_id
    groups: list[Group] = []
    for name, spec in specs.items():
        indices: list[int] = []
        for label in spec.labels:
            if label.lower() not in table:
                raise _unknown("label", label, name, labels)
            indices.append(table[label.lower()])
        for root in spec.subtrees:
            if ontology is None:
                raise SoundwatchError(
                    f"events.groups.{name}: subtree {root!r} needs the AudioSet ontology; "
                    "put ontology.json beside the weights or set events.ontology to its path"
                )
            if root.lower() not in node_by_name:
                names = [str(n["name"]) for n in ontology.values()]
                raise _unknown("ontology node", root, name, names)
            for node_id in ontology_subtree(ontology, node_by_name[root.lower()]):
                if node_id.lower() in table:  # abstract nodes have no model output
                    indices.append(table[node_id.lower()])
        unique = tuple(dict.fromkeys(indices))
        if not unique:
            raise SoundwatchError(
                f"events.groups.{name}: no model class in this group; list labels or subtrees "
                "that the model outputs"
            )
        if spec.weights is None:
            groups.append(Group(name, unique))
            continue
        if len(unique) != len(indices):
            raise SoundwatchError(
                f"events.groups.{name}: a label is listed twice; with weights every label "
                "must name a different class"
            )
        groups.append(
            Group(
                name,
                unique,
                tuple(spec.weights),
                float(spec.bias or 0.0),
                float(spec.max_weight or 0.0),
            )
        )
    return groups


LOGIT_CLIP = 1e-6  # probabilities are clipped to [this, 1 - this] before the logit


def logit(probs: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` in float64, ``p`` clipped to ``[LOGIT_CLIP, 1 - LOGIT_CLIP]``:
    what calibrated groups weigh (the preset's weights are fitted on the same values)."""
    p = np.maximum(np.asarray(probs, dtype=np.float64), LOGIT_CLIP)  # np.clip, cheaper
    np.minimum(p, 1 - LOGIT_CLIP, out=p)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class ScoreTable:
    """How the detector scores all groups at once: :func:`member_table` plus, for the
    calibrated groups, their weights (``[G, M]``, 0 on padding), biases and weights of the
    highest logit.

    The calibrated groups' rows are also kept on their own (``cal_*``), sliced once here:
    :func:`group_scores` runs per window and stream, and slicing per call cost as much as
    the arithmetic."""

    members: np.ndarray
    weights: np.ndarray
    bias: np.ndarray
    max_weight: np.ndarray  # [G]
    calibrated: np.ndarray  # [G] bool
    cal_rows: np.ndarray = field(init=False, repr=False, compare=False)  # [Gc] row indices
    cal_members: np.ndarray = field(init=False, repr=False, compare=False)  # [Gc, M]
    cal_weights: np.ndarray = field(init=False, repr=False, compare=False)  # [Gc, M]
    cal_bias: np.ndarray = field(init=False, repr=False, compare=False)  # [Gc]
    cal_max_weight: np.ndarray = field(init=False, repr=False, compare=False)  # [Gc]

    def __post_init__(self) -> None:
        rows = np.flatnonzero(self.calibrated)
        for name, value in (
            ("cal_rows", rows),
            ("cal_members", self.members[rows]),
            ("cal_weights", self.weights[rows]),
            ("cal_bias", self.bias[rows]),
            ("cal_max_weight", self.max_weight[rows]),
        ):
            object.__setattr__(self, name, value)

    @classmethod
    def of(cls, groups: Sequence[Group]) -> ScoreTable:
        members = member_table(groups)
        weights = np.zeros(members.shape, dtype=np.float64)
        bias = np.zeros(len(groups), dtype=np.float64)
        max_weight = np.zeros(len(groups), dtype=np.float64)
        for row, group in enumerate(groups):
            if group.weights is not None:
                weights[row, : len(group.weights)] = group.weights
                bias[row] = group.bias
                max_weight[row] = group.max_weight
        calibrated = np.array([g.weights is not None for g in groups], dtype=bool)
        return cls(members, weights, bias, max_weight, calibrated)


def group_scores(probs: np.ndarray, groups: Sequence[Group] | ScoreTable) -> np.ndarray:
    """``[..., num_classes]`` probabilities -> ``[..., num_groups]``: the max within each
    group, or the calibrated group's logistic score (the padding of a group's row repeats
    its first class: it adds 0 to the weighted sum and nothing to the max), float32.

    ``groups`` may be a :class:`ScoreTable` already built (what the detector keeps)."""
    table = groups if isinstance(groups, ScoreTable) else ScoreTable.of(groups)
    probs = np.asarray(probs)
    scores = probs.take(table.members, axis=-1).max(axis=-1).astype(np.float32, copy=False)
    if len(table.cal_rows):
        logits = logit(probs.take(table.cal_members, axis=-1))
        z = (
            table.cal_bias
            + (table.cal_weights * logits).sum(axis=-1)
            + table.cal_max_weight * logits.max(axis=-1)
        )
        scores[..., table.cal_rows] = 1.0 / (1.0 + np.exp(-z))  # float64, rounded once
    return scores


def member_table(groups: Sequence[Group]) -> np.ndarray:
    """``[G, M]`` class indices, each group's row padded by repeating its first class, so
    one fancy-indexed ``max`` scores all groups at once."""
    width = max((len(g.indices) for g in groups), default=1)
    table = np.empty((len(groups), width), dtype=np.intp)
    for row, group in enumerate(groups):
        table[row] = list(group.indices) + [group.indices[0]] * (width - len(group.indices))
    return table


def load_ontology(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read ``ontology.json`` (id -> node) with the validating reader."""
    return read_ontology(Path(path))

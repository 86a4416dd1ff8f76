"""The AudioSet class list (``class_labels_indices.csv``) and ontology (``ontology.json``).

Torch-free, so event groups and subscribers can read them without loading a model.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soundwatch.errors import SoundwatchError

AUDIOSET_CLASSES = 527
LABELS_HEADER = ["index", "mid", "display_name"]


@dataclass(frozen=True)
class ClassLabels:
    """Class ``i`` of the model output is ``mids[i]`` (AudioSet id), shown as ``names[i]``."""

    mids: list[str]
    names: list[str]


def read_class_labels(path: Path, expected: int = AUDIOSET_CLASSES) -> ClassLabels:
    """Parse and validate ``class_labels_indices.csv`` (``index,mid,display_name``)."""
    fix = f"replace {path} with the AudioSet class_labels_indices.csv ({expected} classes)"
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SoundwatchError(f"cannot read class labels {path} ({exc}); {fix}") from None
    if not rows or [c.strip() for c in rows[0]] != LABELS_HEADER:
        got = rows[0] if rows else "an empty file"
        raise SoundwatchError(
            f"{path} does not start with the header {','.join(LABELS_HEADER)} (got {got}); {fix}"
        )
    body = rows[1:]
    if len(body) != expected:
        raise SoundwatchError(f"{path} has {len(body)} classes, expected {expected}; {fix}")
    mids: list[str] = []
    names: list[str] = []
    for line, row in enumerate(body, start=2):
        if len(row) != 3 or row[0].strip() != str(line - 2) or not row[1] or not row[2]:
            raise SoundwatchError(
                f"{path} line {line} is not '{line - 2},<mid>,<display_name>' (got {row}); {fix}"
            )
        mids.append(row[1].strip())
        names.append(row[2])
    return ClassLabels(mids=mids, names=names)


def read_ontology(path: Path) -> dict[str, dict[str, Any]]:
    """Parse the AudioSet ``ontology.json``: node id (mid) -> node (``name``, ``child_ids``...)."""
    fix = f"replace {path} with the AudioSet ontology.json"
    try:
        with open(path, encoding="utf-8") as fh:
            nodes = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SoundwatchError(f"cannot read the ontology {path} ({exc}); {fix}") from None
    if not isinstance(nodes, list) or not all(
        isinstance(n, dict) and "id" in n and "name" in n for n in nodes
    ):
        raise SoundwatchError(f"{path} is not a list of ontology nodes with id and name; {fix}")
    return {node["id"]: node for node in nodes}

"""``load_model``: a ready-to-run tagger with its weights and labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from soundwatch.labels import AUDIOSET_CLASSES, read_class_labels
from soundwatch.models.registry import build_model, model_spec
from soundwatch.models.weights import (
    LABELS_FILE,
    load_weights_strict,
    read_checkpoint,
    resolve_bundle_file,
    resolve_weights,
)


@dataclass
class LoadedModel:
    """A trained tagger in eval mode, with the class list its outputs follow."""

    name: str
    model: nn.Module
    labels: list[str]
    """Display names, one per output (527 AudioSet classes)."""
    mids: list[str]
    """AudioSet ids (``/m/...``), one per output."""
    weights_path: Path
    sha256: str
    """sha256 of the checkpoint file (keys caches derived from it, e.g. ONNX exports)."""

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def embedding_dim(self) -> int:
        return int(self.model.embedding_dim)


def load_model(
    name: str,
    weights: str | Path | None = None,
    cache_dir: Path | None = None,
    download: bool = True,
    *,
    base_url: str | None = None,
    labels_base_url: str | None = None,
) -> LoadedModel:
    """Build ``name``, load its AudioSet checkpoint strictly and attach its labels.

    Weights: ``weights`` if given, else the cache dir, else downloaded (see
    :mod:`soundwatch.models.weights`). Labels: ``class_labels_indices.csv`` beside the
    weights, else in the cache dir, else downloaded into it.
    """
    model_spec(name)  # unknown names fail before any file access
    path, sha = resolve_weights(
        name, weights, cache_dir=cache_dir, download=download, base_url=base_url
    )
    model = build_model(name, num_classes=AUDIOSET_CLASSES)
    load_weights_strict(model, read_checkpoint(path, name), name, path)
    model.eval()
    labels_path = resolve_bundle_file(
        LABELS_FILE, path.parent, cache_dir=cache_dir, download=download, base_url=labels_base_url
    )
    labels = read_class_labels(labels_path, AUDIOSET_CLASSES)
    return LoadedModel(
        name=name,
        model=model,
        labels=labels.names,
        mids=labels.mids,
        weights_path=path,
        sha256=sha,
    )

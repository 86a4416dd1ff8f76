"""``load_model``: a ready-to-run tagger with its weights and labels."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from soundwatch.labels import AUDIOSET_CLASSES, read_class_labels
from soundwatch.model_catalog import model_spec
from soundwatch.models.weights import (
    LABELS_FILE,
    load_weights_strict,
    read_checkpoint,
    resolve_bundle_file,
    resolve_weights,
)

if TYPE_CHECKING:
    from torch import nn


class LoadedModel:
    """A trained tagger in eval mode, with the class list its outputs follow.

    ``model`` may be given as None: the checkpoint is then read (importing torch) the first
    time :attr:`model` is used. A run whose model is served from a cached ONNX export never
    uses it, so it starts without torch (``load_model(..., lazy=True)``).
    """

    def __init__(
        self,
        name: str,
        model: nn.Module | None,
        labels: list[str],
        mids: list[str],
        weights_path: Path,
        sha256: str,
    ) -> None:
        self.name = name
        self._model = model
        self.labels = labels
        """Display names, one per output (527 AudioSet classes)."""
        self.mids = mids
        """AudioSet ids (``/m/...``), one per output."""
        self.weights_path = weights_path
        self.sha256 = sha256
        """sha256 of the checkpoint file (keys caches derived from it, e.g. ONNX exports)."""
        self._embedding_dim: int | None = None

    def __repr__(self) -> str:
        state = "read" if self._model is not None else "not read yet"
        return f"LoadedModel({self.name!r}, {self.weights_path}, {self.sha256[:16]}, {state})"

    @property
    def model(self) -> nn.Module:
        """The torch module (the checkpoint is read here on first use when it was deferred)."""
        if self._model is None:
            self._model = _read_model(self.name, self.weights_path)
        return self._model

    @model.setter
    def model(self, model: nn.Module) -> None:
        self._model = model
        self._embedding_dim = None

    @property
    def is_read(self) -> bool:
        """Whether the torch module exists (False until a deferred checkpoint is needed)."""
        return self._model is not None

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def embedding_dim(self) -> int:
        if self._model is None and self._embedding_dim is not None:
            return self._embedding_dim
        return int(self.model.embedding_dim)

    def know_embedding_dim(self, dim: int) -> None:
        """Record the embedding size found elsewhere (an ONNX export of this very checkpoint),
        so asking for it does not read the checkpoint."""
        self._embedding_dim = int(dim)


def _read_model(name: str, path: Path) -> nn.Module:
    """Build ``name`` and load the checkpoint at ``path`` into it strictly, in eval mode."""
    from soundwatch.models.registry import build_model  # imports torch

    model = build_model(name, num_classes=AUDIOSET_CLASSES)
    load_weights_strict(model, read_checkpoint(path, name), name, path)
    return model.eval()


def load_model(
    name: str,
    weights: str | Path | None = None,
    cache_dir: Path | None = None,
    download: bool = True,
    *,
    base_url: str | None = None,
    labels_base_url: str | None = None,
    lazy: bool = False,
) -> LoadedModel:
    """Build ``name``, load its AudioSet checkpoint strictly and attach its labels.

    Weights: ``weights`` if given, else the cache dir, else downloaded (see
    :mod:`soundwatch.models.weights`). Labels: ``class_labels_indices.csv`` beside the
    weights, else in the cache dir, else downloaded into it. ``lazy``: find and hash the
    checkpoint but read it only when :attr:`LoadedModel.model` is first used.
    """
    model_spec(name)  # unknown names fail before any file access
    path, sha = resolve_weights(
        name, weights, cache_dir=cache_dir, download=download, base_url=base_url
    )
    model = None if lazy else _read_model(name, path)
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

"""The head file: a few-shot classifier on a backbone's window outputs, in one file.

A head maps a window's features to one probability per label of the user's own sounds:
standardise (``(x - mean) / scale``), then dense layers (ReLU between them), then a
sigmoid. The features (:func:`head_features`) are the window's embedding ``[D]`` and, for
heads of format 2, the square roots of its AudioSet probabilities ``[C]`` beside it: the
backbone's own classes carry what it learned about sounds, and a head learned from one or
two examples leans on them (k = 1 accuracy on ESC-50's clean windows: 0.77 with them,
0.71 without; ``docs/custom-sounds.md``). It belongs to one backbone (model name and
checkpoint hash) and one window length: outputs of another checkpoint, or of windows of
another length, mean something else, so :meth:`Head.check_compatible` refuses them with a
message saying what to do.

The file is a NumPy ``.npz`` archive (read with ``allow_pickle=False``: no code in it)
holding ``meta`` (UTF-8 JSON: labels, thresholds, backbone, window, what it was learned
from) and the arrays; ``meta.sha256`` covers every other byte of meaning (the JSON without
that key and each array's dtype, shape and data), so a damaged or hand-edited file is
refused instead of tagging nonsense. Applying a head is numpy only (no torch).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from soundwatch.errors import SoundwatchError

FORMAT = "soundwatch-head"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: embedding-only heads
INPUTS = ("embedding", "embedding+sqrt_probs")
"""What a head reads: the embedding alone (format 1), or with sqrt(AudioSet probabilities)."""
HEAD_SUFFIX = ".swhead"
LABEL_RULE = "letters, digits, '_' and '-', starting with a letter or digit (at most 64)"
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def check_label(label: str) -> str:
    """A head label becomes an event group and an MQTT topic part: keep it topic-safe."""
    if not _LABEL.match(label):
        raise SoundwatchError(f"head label {label!r} is not valid: use {LABEL_RULE}")
    return label


@dataclass(frozen=True)
class Backbone:
    """What produced the embeddings a head was learned on."""

    model: str  # model name, e.g. mn04
    weights_sha256: str  # sha256 of the checkpoint file
    embedding_dim: int
    window_s: float  # seconds per window the embeddings were computed on
    num_classes: int = 0  # the backbone's AudioSet classes (read by "embedding+sqrt_probs")


def head_features(embeddings: np.ndarray, probs: np.ndarray | None, inputs: str) -> np.ndarray:
    """The vector a head reads for each window (``[B, F]`` or ``[F]``), as ``inputs`` says."""
    x = np.asarray(embeddings, dtype=np.float32)
    if inputs == "embedding":
        return x
    if probs is None:
        raise SoundwatchError(f"a head reading {inputs!r} needs the window's probabilities")
    root = np.sqrt(np.clip(np.asarray(probs, dtype=np.float32), 0.0, 1.0))
    return np.concatenate([x, root], axis=-1)


@dataclass(frozen=True)
class Head:
    """A learned head: labels, per-label thresholds, layers and the backbone it fits."""

    name: str
    labels: list[str]
    thresholds: np.ndarray  # [H] float32: a window holds label h when p[h] >= thresholds[h]
    mean: np.ndarray  # [D] float32
    scale: np.ndarray  # [D] float32, > 0
    weights: list[np.ndarray]  # [D, K1], [K1, K2], ..., [K, H] float32
    biases: list[np.ndarray]  # [K1], ..., [H] float32
    backbone: Backbone
    info: dict[str, Any] = field(default_factory=dict)  # how it was learned (shown, not used)
    inputs: str = "embedding"  # one of INPUTS

    def __post_init__(self) -> None:
        if self.inputs not in INPUTS:
            raise SoundwatchError(f"head {self.name!r} reads unknown inputs {self.inputs!r}")
        for label in self.labels:
            check_label(label)
        if len(set(self.labels)) != len(self.labels):
            raise SoundwatchError(f"head {self.name!r} repeats a label: {self.labels}")
        dims = [self.input_dim] + [w.shape[1] for w in self.weights]
        shapes_ok = (
            len(self.weights) == len(self.biases) >= 1
            and all(w.shape[0] == d for w, d in zip(self.weights, dims, strict=False))
            and all(
                b.shape == (w.shape[1],) for w, b in zip(self.weights, self.biases, strict=True)
            )
            and dims[-1] == len(self.labels) == len(self.thresholds)
            and self.mean.shape == self.scale.shape == (self.input_dim,)
        )
        if not shapes_ok:
            raise SoundwatchError(f"head {self.name!r}: its arrays do not fit together")

        # Standardisation folded into the first layer: one matrix product less per window.
        w0 = (self.weights[0] / self.scale[:, None]).astype(np.float32)
        b0 = (self.biases[0] - self.mean @ w0).astype(np.float32)
        rest = zip(self.weights[1:], self.biases[1:], strict=True)
        object.__setattr__(self, "_layers", [(w0, b0), *rest])

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def input_dim(self) -> int:
        """Length of the feature vector the head reads (:func:`head_features`)."""
        extra = self.backbone.num_classes if self.inputs == "embedding+sqrt_probs" else 0
        return self.backbone.embedding_dim + extra

    def predict(self, embeddings: np.ndarray, probs: np.ndarray | None = None) -> np.ndarray:
        """``[B, D]`` (or ``[D]``) embeddings, with the windows' AudioSet probabilities
        ``[B, C]`` when the head reads them -> ``[B, H]`` (or ``[H]``) float32 probabilities."""
        return self.apply(head_features(embeddings, probs, self.inputs))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The head on its features (``[B, F]`` or ``[F]``, :func:`head_features` of its
        ``inputs``), for callers that build the features once for several heads."""
        last = len(self._layers) - 1
        for i, (w, b) in enumerate(self._layers):
            x = x @ w + b
            if i < last:
                np.maximum(x, 0.0, out=x)
        np.clip(x, -60.0, 60.0, out=x)
        return 1.0 / (1.0 + np.exp(-x))

    def check_compatible(self, model: str, weights_sha256: str, window_s: float) -> None:
        """Refuse a head learned on another backbone, checkpoint or window length."""
        b = self.backbone
        if b.model != model:
            raise SoundwatchError(
                f"head {self.name!r} was learned on model {b.model}, but this run uses "
                f"{model}: run with --model {b.model}, or learn the head again with "
                f"--model {model}"
            )
        if b.weights_sha256 != weights_sha256:
            raise SoundwatchError(
                f"head {self.name!r} was learned on another {model} checkpoint (sha256 "
                f"{b.weights_sha256[:12]}..., this run's is {weights_sha256[:12]}...): use "
                "the weights it was learned with (--weights), or learn the head again"
            )
        if abs(b.window_s - window_s) > 1e-6:
            raise SoundwatchError(
                f"head {self.name!r} was learned on {b.window_s} s windows, but this run "
                f"tags {window_s} s windows: run with --window {b.window_s}, or learn the "
                f"head again with --window {window_s}"
            )

    # -- file -----------------------------------------------------------------------------

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {"thresholds": self.thresholds, "mean": self.mean, "scale": self.scale}
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            arrays[f"w{i}"] = w
            arrays[f"b{i}"] = b
        return {k: np.ascontiguousarray(v, dtype="<f4") for k, v in arrays.items()}

    def _meta(self) -> dict[str, Any]:
        b = self.backbone
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "name": self.name,
            "labels": list(self.labels),
            "layers": len(self.weights),
            "inputs": self.inputs,
            "backbone": {
                "model": b.model,
                "weights_sha256": b.weights_sha256,
                "embedding_dim": b.embedding_dim,
                "num_classes": b.num_classes,
                "window_s": b.window_s,
            },
            "info": self.info,
        }

    def save(self, path: str | Path) -> Path:
        """Write the head file atomically (a running soundwatch never reads half a file)."""
        path = Path(path)
        arrays = self._arrays()
        meta = self._meta()
        meta["sha256"] = _digest(meta, arrays)
        buffer = io.BytesIO()
        meta_bytes = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
        np.savez(buffer, meta=meta_bytes, **arrays)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(buffer.getvalue())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def _digest(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    body = {k: v for k, v in meta.items() if k != "sha256"}
    h.update(json.dumps(body, sort_keys=True).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name], dtype="<f4")
        h.update(f"{name}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def load_head(path: str | Path) -> Head:
    """Read and verify a head file; a :class:`SoundwatchError` says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise SoundwatchError(
            f"head file not found: {str(path)!r} (make one with soundwatch learn)"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            contents = {name: z[name] for name in z.files}
        meta = json.loads(contents.pop("meta").tobytes().decode())
    except zipfile.BadZipFile as error:
        raise SoundwatchError(
            f"head file {str(path)!r} is damaged ({error}); learn it again"
        ) from None
    except (OSError, ValueError, KeyError, UnicodeDecodeError, EOFError) as error:
        raise SoundwatchError(
            f"{str(path)!r} is not a soundwatch head file ({error}); make one with soundwatch learn"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SoundwatchError(f"{str(path)!r} is not a soundwatch head file")
    if meta.get("version") not in READABLE_VERSIONS:
        raise SoundwatchError(
            f"head file {str(path)!r} has format version {meta.get('version')!r}; this "
            f"soundwatch reads versions {', '.join(map(str, READABLE_VERSIONS))}: learn the "
            "head again"
        )
    if meta.get("sha256") != _digest(meta, contents):
        raise SoundwatchError(
            f"head file {str(path)!r} fails its checksum (damaged or edited); learn it again"
        )
    try:
        layers = int(meta["layers"])
        b = meta["backbone"]
        return Head(
            name=str(meta["name"]),
            labels=[str(label) for label in meta["labels"]],
            thresholds=contents["thresholds"],
            mean=contents["mean"],
            scale=contents["scale"],
            weights=[contents[f"w{i}"] for i in range(layers)],
            biases=[contents[f"b{i}"] for i in range(layers)],
            backbone=Backbone(
                model=str(b["model"]),
                weights_sha256=str(b["weights_sha256"]),
                embedding_dim=int(b["embedding_dim"]),
                window_s=float(b["window_s"]),
                num_classes=int(b.get("num_classes", 0)),
            ),
            info=dict(meta.get("info") or {}),
            inputs=str(meta.get("inputs", "embedding")),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise SoundwatchError(f"head file {str(path)!r} lacks {error}; learn it again") from None

"""ONNX Runtime backend for CPU inference (optional extra: ``pip install soundwatch[onnx]``).

The model is exported once (dynamic batch and time axes, sigmoid included) with the
``torch.onnx`` dynamo exporter to the cache directory, keyed by the checkpoint's sha256,
and run with an onnxruntime CPU session. DyMN exports too: its depthwise dynamic convs
switch to an export-friendly formulation while exporting (see ``DynamicConv``).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from soundwatch.errors import SoundwatchError
from soundwatch.models.weights import temporary_sibling

if TYPE_CHECKING:  # torch is imported only to export: running a cached export needs none
    from torch import Tensor, nn

log = logging.getLogger(__name__)

INPUT_NAME = "mel"
OUTPUT_NAMES = ("probabilities", "embedding")
EXPORT_FORMAT = 2
"""Bump when the exported graph changes, so stale cached exports are not reused."""
MIN_FRAMES = 1
"""Shortest window the export accepts: any window the pipeline makes (a stream shorter than
one window is tagged as one window of all its frames, down to a single frame)."""
MAX_FRAMES = 1 << 20


def require_onnxruntime() -> ModuleType:
    """Import onnxruntime, or explain how to install the optional extra."""
    try:
        import onnxruntime
    except ImportError:
        raise SoundwatchError(
            "backend 'onnx' needs onnxruntime and onnx, which are not installed: "
            "pip install soundwatch[onnx] (or use backend 'torch')"
        ) from None
    return onnxruntime


def torch_version() -> str:
    """The installed torch's version without its local part (``2.5.1``, not ``2.5.1+cpu``),
    read from the package metadata: deciding whether a cached export fits must not import
    torch (2 s of a start that otherwise needs none)."""
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:  # torch without metadata: ask it
        import torch

        version = torch.__version__
    return version.split("+")[0]


def onnx_cache_path(cache_dir: Path, name: str, sha256: str) -> Path:
    """Where the export of checkpoint ``sha256`` of model ``name`` is cached."""
    version = torch_version()
    return cache_dir / "onnx" / f"{name}-{sha256[:16]}-torch{version}-f{EXPORT_FORMAT}.onnx"


def export_onnx(model: nn.Module, path: Path) -> Path:
    """Export a tagger (eval mode, CPU) with its sigmoid to ``path`` atomically."""
    import torch

    class _ProbabilityModel(torch.nn.Module):
        """The exported graph: mel ``[B, 1, 128, T]`` -> (sigmoid probabilities, embedding)."""

        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, mel: Tensor) -> tuple[Tensor, Tensor]:
            logits, embedding = self.model(mel)
            return torch.sigmoid(logits), embedding

    return export_module(
        _ProbabilityModel(model).eval(),
        torch.zeros(2, 1, 128, 100),
        path,
        input_name=INPUT_NAME,
        output_names=OUTPUT_NAMES,
        dynamic_axes={
            0: torch.export.Dim("batch", min=1, max=1 << 16),
            3: torch.export.Dim("frames", min=MIN_FRAMES, max=MAX_FRAMES),
        },
    )


def export_module(
    module: nn.Module,
    example: Tensor,
    path: Path,
    *,
    input_name: str,
    output_names: tuple[str, ...],
    dynamic_axes: dict[int, Any],
) -> Path:
    """Export a one-input module with the dynamo exporter to ``path``, atomically.

    ``dynamic_axes`` maps input axes to ``torch.export.Dim`` objects.
    """
    import torch

    require_onnxruntime()
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise SoundwatchError(
            "exporting to ONNX needs onnxscript: pip install soundwatch[onnx]"
        ) from None
    tmp = temporary_sibling(path)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                str(tmp),
                dynamo=True,
                external_data=False,
                input_names=[input_name],
                output_names=list(output_names),
                dynamic_shapes=(dynamic_axes,),
                optimize=True,
                verbose=False,
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class OnnxTagger:
    """An onnxruntime CPU session over an exported model."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        ort = require_onnxruntime()
        options: Any = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle pool threads sleep instead of spinning: a spinning pool doubled the CPU of a
        # one-stream run and took cores from the capture and inference threads.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise SoundwatchError(
                f"cannot load the ONNX model {path} ({exc}); delete it to export it again"
            ) from None
        self.path = path

    def output_width(self, index: int) -> int:
        """The fixed size of output ``index``'s last axis (probabilities: classes;
        embedding: its dimension), read from the graph; error if the graph leaves it open."""
        shape = self.session.get_outputs()[index].shape
        if not shape or not isinstance(shape[-1], int):
            raise SoundwatchError(
                f"the ONNX model {self.path} has no fixed width for output {index} ({shape}); "
                "delete it to export it again"
            )
        return shape[-1]

    def run(self, mels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[B, 1, 128, T]`` float32 -> (probabilities ``[B, C]``, embeddings ``[B, D]``)."""
        probs, embedding = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: mels})
        return probs, embedding

    def run_raw(self, inputs: np.ndarray) -> list[np.ndarray]:
        """All outputs of the graph for its single input (for graphs made by export_module)."""
        return self.session.run(None, {self.session.get_inputs()[0].name: inputs})


def ensure_export(model: Callable[[], nn.Module], name: str, sha256: str, cache_dir: Path) -> Path:
    """The cached export of checkpoint ``sha256``, exported first (from ``model()``, so the
    checkpoint is read only then) if the cache does not hold it."""
    path = onnx_cache_path(cache_dir, name, sha256)
    if not path.is_file():
        log.warning(
            "exporting %s to ONNX Runtime once (about 15-30 s; later starts load the cache %s)",
            name,
            path,
        )
        started = time.monotonic()
        export_onnx(model(), path)
        log.info("exported %s in %.1f s", name, time.monotonic() - started)
    return path


def cached_onnx_tagger(
    model: nn.Module, name: str, sha256: str, cache_dir: Path, threads: int | None = None
) -> OnnxTagger:
    """Load the cached export for this checkpoint, exporting it first if needed."""
    return OnnxTagger(ensure_export(lambda: model, name, sha256, cache_dir), threads)

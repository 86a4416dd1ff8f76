"""AudioSet taggers: EfficientAT MobileNetV3 (``mn*``) and dynamic MobileNets (``dymn*``).

``build_model`` makes an architecture, ``load_model`` adds its checkpoint and labels,
``InferenceWorker`` runs batches of mel windows on CPU (torch or ONNX Runtime) or CUDA.

Importing this package does not import torch: ``build_model`` loads it when first used
(``soundwatch.models.registry``), the loader and worker when a checkpoint is read or the
torch backend runs. A run served from a cached ONNX export starts without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from soundwatch.labels import ClassLabels, read_class_labels, read_ontology
from soundwatch.model_catalog import MODEL_NAMES, ModelSpec, model_spec
from soundwatch.models.loader import LoadedModel, load_model
from soundwatch.models.weights import (
    LABELS_FILE,
    ONTOLOGY_FILE,
    default_cache_dir,
    resolve_bundle_file,
    resolve_weights,
)
from soundwatch.models.worker import InferenceWorker

if TYPE_CHECKING:
    from soundwatch.models.registry import build_model

__all__ = [
    "LABELS_FILE",
    "MODEL_NAMES",
    "ONTOLOGY_FILE",
    "ClassLabels",
    "InferenceWorker",
    "LoadedModel",
    "ModelSpec",
    "build_model",
    "default_cache_dir",
    "load_model",
    "model_spec",
    "read_class_labels",
    "read_ontology",
    "resolve_bundle_file",
    "resolve_weights",
]


def __getattr__(name: str) -> Any:
    """``build_model`` on first use (it imports torch and the architectures)."""
    if name == "build_model":
        from soundwatch.models.registry import build_model

        return build_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

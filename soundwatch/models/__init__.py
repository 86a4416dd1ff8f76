"""AudioSet taggers: EfficientAT MobileNetV3 (``mn*``) and dynamic MobileNets (``dymn*``).

``build_model`` makes an architecture, ``load_model`` adds its checkpoint and labels,
``InferenceWorker`` runs batches of mel windows on CPU (torch or ONNX Runtime) or CUDA.
"""

from soundwatch.labels import ClassLabels, read_class_labels, read_ontology
from soundwatch.models.loader import LoadedModel, load_model
from soundwatch.models.registry import MODEL_NAMES, ModelSpec, build_model, model_spec
from soundwatch.models.weights import (
    LABELS_FILE,
    ONTOLOGY_FILE,
    default_cache_dir,
    resolve_bundle_file,
    resolve_weights,
)
from soundwatch.models.worker import InferenceWorker

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

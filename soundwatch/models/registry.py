"""Model names -> untrained architectures (the names themselves: ``soundwatch.model_catalog``)."""

from __future__ import annotations

from torch import nn

from soundwatch.model_catalog import MODEL_NAMES, MODEL_SPECS, ModelSpec, model_spec
from soundwatch.models.dymn import DynamicMobileNet, DynamicSettings
from soundwatch.models.mobilenet import MobileNetV3

__all__ = ["MODEL_NAMES", "MODEL_SPECS", "ModelSpec", "build_model", "model_spec"]


def build_model(name: str, num_classes: int = 527, *, dyconv_temperature: float = 1.0) -> nn.Module:
    """Build an untrained ``name`` model (eval mode is up to the caller).

    ``dyconv_temperature`` only affects DyMN models: 1.0 is the value their trained
    checkpoints use; EfficientAT builds untrained models with 30 (start of the annealing).
    """
    spec = model_spec(name)
    if spec.family == "mn":
        return MobileNetV3(spec.width_mult, num_classes)
    settings = DynamicSettings(temperature=dyconv_temperature)
    return DynamicMobileNet(spec.width_mult, num_classes, settings)

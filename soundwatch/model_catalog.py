"""The supported taggers by name: architecture family, width and official checkpoint file.

Torch-free, so the configuration (and anything else that only needs the names) can import
it without loading torch; ``soundwatch.models.registry`` builds the architectures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from soundwatch.errors import SoundwatchError

Family = Literal["mn", "dymn"]


@dataclass(frozen=True)
class ModelSpec:
    """A supported model: architecture family, width multiplier, AudioSet checkpoint file."""

    name: str
    family: Family
    width_mult: float
    release_file: str
    """File name of the AudioSet-trained checkpoint in the EfficientAT v0.0.1 release."""


# Release file names as published with EfficientAT (the ``*_as`` AudioSet checkpoints).
MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("mn01", "mn", 0.1, "mn01_as_mAP_298.pt"),
        ModelSpec("mn02", "mn", 0.2, "mn02_as_mAP_378.pt"),
        ModelSpec("mn04", "mn", 0.4, "mn04_as_mAP_432.pt"),
        ModelSpec("mn05", "mn", 0.5, "mn05_as_mAP_443.pt"),
        ModelSpec("mn10", "mn", 1.0, "mn10_as_mAP_471.pt"),
        ModelSpec("mn20", "mn", 2.0, "mn20_as_mAP_478.pt"),
        ModelSpec("mn30", "mn", 3.0, "mn30_as_mAP_482.pt"),
        ModelSpec("mn40", "mn", 4.0, "mn40_as_mAP_484.pt"),
        ModelSpec("dymn04", "dymn", 0.4, "dymn04_as.pt"),
        ModelSpec("dymn10", "dymn", 1.0, "dymn10_as.pt"),
        ModelSpec("dymn20", "dymn", 2.0, "dymn20_as_mAP_493.pt"),
    )
}

MODEL_NAMES: tuple[str, ...] = tuple(MODEL_SPECS)


def model_spec(name: str) -> ModelSpec:
    """The spec of ``name``; a :class:`SoundwatchError` listing the choices if unknown."""
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise SoundwatchError(
            f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}"
        ) from None

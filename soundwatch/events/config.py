"""The ``events`` section of the configuration, validated strictly.

Every key is optional. Per-group keys (``threshold_on``, ``threshold_off``,
``min_duration``, ``max_gap``) override the section-wide defaults for that group only;
``weights`` and ``bias`` (and optionally ``max_weight``) turn a group's score into a
calibrated one (a logistic function of its classes' logits and of their highest logit,
learned by ``benchmarks/events.py``) instead of their highest probability.
See docs/events.md for what each step does and how the defaults were chosen.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from soundwatch.errors import SoundwatchError
from soundwatch.validation import (
    StrictModel,
    check_hop_within_window,
    check_off_not_above_on,
    check_whole_frames,
    format_validation_error,
    parse_section,
)

PRESETS = ("esc50",)
DEFAULT_OFF_RATIO = 0.3  # threshold_off / threshold_on when threshold_off is not given
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class GroupConfig(StrictModel):
    """One event label: the classes it pools and, optionally, its own thresholds."""

    labels: list[str] = Field(default_factory=list, description="AudioSet names or /m/ ids")
    subtrees: list[str] = Field(
        default_factory=list, description="ontology nodes: the node and everything below it"
    )
    threshold_on: float | None = Field(default=None, gt=0.0, le=1.0)
    threshold_off: float | None = Field(default=None, gt=0.0, le=1.0)
    min_duration: float | None = Field(default=None, ge=0.0, le=600.0)
    max_gap: float | None = Field(default=None, ge=0.0, le=600.0)
    weights: list[FiniteFloat] | None = Field(
        default=None,
        description="one weight per entry of labels: the score is sigmoid(bias + sum of "
        "weight x logit(probability)) instead of the highest probability",
    )
    bias: FiniteFloat | None = Field(default=None, description="with weights: the logistic's bias")
    max_weight: FiniteFloat | None = Field(
        default=None,
        description="with weights: adds max_weight x the highest logit(probability) of the "
        "labels to the logistic's sum (0 when not given)",
    )

    @model_validator(mode="after")
    def _has_members(self) -> GroupConfig:
        if not self.labels and not self.subtrees:
            raise ValueError("a group needs at least one entry in labels or subtrees")
        check_off_not_above_on(self.threshold_off, self.threshold_on)
        if (self.weights is None) != (self.bias is None):
            raise ValueError("weights and bias go together: give both or neither")
        if self.max_weight is not None and self.weights is None:
            raise ValueError("max_weight is part of a calibrated score: give weights and bias too")
        if self.weights is not None:
            if self.subtrees:
                raise ValueError("weights need the classes listed in labels, not subtrees")
            if len(self.weights) != len(self.labels):
                raise ValueError(
                    f"weights has {len(self.weights)} entries but labels has "
                    f"{len(self.labels)}: give one weight per label"
                )
        return self


class SmoothingConfig(StrictModel):
    """Smoothing of each group's score over time steps (after window agreement)."""

    method: Literal["none", "median", "ema"] = "none"
    width: float = Field(
        default=0.5,
        gt=0.0,
        le=60.0,
        description="median: span of the filter in seconds (centred; adds half of it to the "
        "latency); ema: time constant in seconds (causal)",
    )


#: Added to the preset by default: what a home listener wants beyond the ESC-50 sounds.
#: Named by labels (not ontology subtrees) so they need no ontology file.
DEFAULT_GROUPS = {
    "speech": GroupConfig(
        labels=[
            "Speech",
            "Male speech, man speaking",
            "Female speech, woman speaking",
            "Child speech, kid speaking",
            "Conversation",
            "Narration, monologue",
        ],
        threshold_on=0.3,
    ),
    "music": GroupConfig(labels=["Music"], threshold_on=0.3),
    "alarm": GroupConfig(
        labels=["Alarm", "Smoke detector, smoke alarm", "Fire alarm", "Buzzer", "Beep, bleep"],
        threshold_on=0.2,
    ),
}


class EventsConfig(StrictModel):
    """Sound events from window scores: agreement, smoothing, hysteresis, durations."""

    enabled: bool = True
    window: float = Field(
        default=3.0,
        ge=0.32,
        le=30.0,
        description="seconds per window the detector is fed (thresholds depend on it)",
    )
    hop: float = Field(default=0.5, ge=0.01, le=30.0, description="seconds between its windows")
    step: float = Field(default=0.1, ge=0.01, le=1.0, description="time resolution, seconds")
    agreement: float = Field(
        default=0.8,
        gt=0.0,
        le=1.0,
        description="a step holds a sound when this fraction of the windows covering it "
        "say so (the step's score is the (1 - agreement) quantile of their scores)",
    )
    trim: float = Field(
        default=0.3,
        ge=0.0,
        le=10.0,
        description="seconds moved inwards at both ends of an event: windows that only "
        "partly hold a sound still score it, so raw boundaries reach past the sound",
    )
    lead_in: float | None = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="an event's onset moves back over the steps just before it that score "
        "at least this x its threshold_on (and threshold_off): window agreement makes a "
        "sound cross threshold_on late; null: onsets at the first step above threshold_on",
    )
    max_lead_in: float = Field(
        default=3.0, ge=0.0, le=60.0, description="seconds the lead-in reaches back at most"
    )
    smoothing: SmoothingConfig = Field(default_factory=SmoothingConfig)
    threshold_on: float = Field(
        default=0.1, gt=0.0, le=1.0, description="for groups without their own threshold_on"
    )
    threshold_off: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="null: 0.3 x threshold_on; a group's own threshold_on scales its off "
        "threshold by the same ratio unless it sets threshold_off",
    )
    min_duration: float = Field(default=0.6, ge=0.0, le=600.0)
    max_gap: float = Field(
        default=1.0, ge=0.0, le=600.0, description="shorter silences do not split an event"
    )
    preset: Literal[PRESETS] | None = Field(  # type: ignore[valid-type]
        default="esc50",
        description="built-in groups (with tuned thresholds); groups below add to or override "
        "them; null: only the groups below, or every class its own group if there are none",
    )
    groups: dict[str, GroupConfig] = Field(default_factory=lambda: dict(DEFAULT_GROUPS))
    ontology: Path | None = Field(
        default=None, description="ontology.json for subtrees; null: beside the model weights"
    )

    @field_validator("groups")
    @classmethod
    def _group_names(cls, value: dict[str, GroupConfig]) -> dict[str, GroupConfig]:
        for name in value:
            if not name or any(c in name for c in "\t\n"):
                raise ValueError(f"group name {name!r} must be non-empty, on one line")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> EventsConfig:
        check_hop_within_window(self.window, self.hop)
        check_off_not_above_on(self.threshold_off, self.threshold_on)
        check_whole_frames(window=self.window, hop=self.hop, step=self.step)
        return self

    def all_groups(self) -> dict[str, GroupConfig]:
        """The preset's groups (if any) updated with the groups given here."""
        merged = dict(load_preset(self.preset)) if self.preset else {}
        merged.update(self.groups)
        return merged


def parse_events_config(data: Any, origin: str = "<config>") -> EventsConfig:
    """Validate an ``events`` mapping on its own, exactly as the whole config does."""
    if isinstance(data, EventsConfig):
        return data
    return parse_section(EventsConfig, data, origin, ("events",))


def load_preset(name: str) -> dict[str, GroupConfig]:
    """The groups of a built-in preset (``esc50``: the 50 ESC-50 categories)."""
    if name not in PRESETS:
        raise SoundwatchError(f"unknown events preset {name!r}; choose one of {PRESETS}")
    text = resources.files("soundwatch.events").joinpath(f"{name}_groups.yaml").read_text("utf-8")
    data = yaml.safe_load(text)
    try:
        return {k: GroupConfig.model_validate(v) for k, v in data["groups"].items()}
    except ValidationError as error:  # a packaging bug, not user input
        raise SoundwatchError(
            format_validation_error(error, f"events preset {name}", ("groups",))
        ) from None

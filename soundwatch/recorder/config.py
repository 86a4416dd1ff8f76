"""The ``recorder`` section of the configuration: event clips, the history, privacy and
retention (docs/history.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ByteSize, Field, model_validator

from soundwatch.validation import StrictModel

#: What ``recorder.privacy`` allows: drop a clip when speech is heard in its span, keep
#: every clip, or keep none (the history still lists every event).
PRIVACY_MODES = ("drop_speech", "keep_all", "no_clips")
CLIP_FORMATS = ("flac", "wav", "ogg")


class RetentionConfig(StrictModel):
    """How much history is kept: enforced while running, oldest first."""

    max_age_days: float | None = Field(
        default=30.0, gt=0.0, description="events (and their clips) older than this are deleted"
    )
    max_bytes: ByteSize | None = Field(
        default=ByteSize(1_000_000_000),
        description="total size of the clips ('500MB', '2GiB'); the oldest clips go first, "
        "their events stay listed with the reason",
    )
    interval: float = Field(default=60.0, ge=1.0, le=86400.0, description="seconds between checks")


class RecorderConfig(StrictModel):
    """Event clips cut from a per-stream audio ring, and the event history."""

    enabled: bool = False
    dir: Path | None = Field(default=None, description="holds events.sqlite and clips/")
    format: Literal[CLIP_FORMATS] = "flac"  # type: ignore[valid-type]
    pre_roll: float = Field(default=2.0, ge=0.0, le=60.0)
    post_roll: float = Field(default=2.0, ge=0.0, le=60.0)
    max_clip: float = Field(
        default=30.0,
        ge=1.0,
        le=600.0,
        description="longest clip in seconds (pre-roll included): longer events are cut there",
    )
    ring_slack: float = Field(
        default=30.0,
        ge=5.0,
        le=600.0,
        description="seconds of audio kept beyond max_clip for the event's end to be known "
        "(detector latency, inference backlog)",
    )
    example_seconds: float = Field(
        default=30.0,
        ge=1.0,
        le=600.0,
        description="audio kept per stream for soundwatch record when the control endpoint "
        "is on and the recorder off (128 kB per second per stream); with the recorder on, "
        "its ring (max_clip + ring_slack) serves",
    )
    privacy: Literal[PRIVACY_MODES] = "drop_speech"  # type: ignore[valid-type]
    speech_threshold: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="a clip holds speech when a window over it scores this on the speech classes",
    )
    retention: RetentionConfig = Field(default_factory=RetentionConfig)

    @model_validator(mode="after")
    def _dir_when_enabled(self) -> RecorderConfig:
        if self.enabled and self.dir is None:
            raise ValueError("recorder.enabled needs recorder.dir (or soundwatch run --record DIR)")
        if self.pre_roll >= self.max_clip:
            raise ValueError(
                f"pre_roll ({self.pre_roll} s) must be shorter than max_clip ({self.max_clip} s)"
            )
        return self

    @property
    def ring_seconds(self) -> float:
        """Audio kept per stream: the longest clip plus the slack."""
        return self.max_clip + self.ring_slack

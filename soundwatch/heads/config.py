"""The ``heads`` section of the configuration: which custom-sound heads a run applies."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from soundwatch.validation import StrictModel


class HeadsConfig(StrictModel):
    """Head files (``soundwatch learn``) or folders of ``*.swhead`` files, and how often a
    running soundwatch looks for changed, new or removed ones."""

    paths: list[Path] = Field(default_factory=list)
    watch: float = Field(
        default=1.0, ge=0.0, le=3600.0, description="seconds between checks; 0 = never reload"
    )

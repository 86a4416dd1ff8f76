"""Shared test fixtures: locating the data in ``../shared`` beside the checkout.

Tests read golden data, checkpoints and audio from ``../shared``. When that data is
missing the test is skipped, unless ``SOUNDWATCH_REQUIRE_SHARED=1`` (CI sets it), in
which case a missing file fails the test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"


def shared_file(relative: str) -> Path:
    """Return ``../shared/<relative>``, skipping (or failing under CI) when it is absent."""
    path = SHARED / relative
    if not path.exists():
        message = f"missing shared data file {path}"
        if os.environ.get("SOUNDWATCH_REQUIRE_SHARED") == "1":
            pytest.fail(message + " (SOUNDWATCH_REQUIRE_SHARED=1)")
        pytest.skip(message)
    return path


@pytest.fixture
def shared():
    """The ``shared_file`` helper as a fixture: ``shared("golden/frontend.npz")``."""
    return shared_file

"""Shared test fixtures: locating the data in ``../shared`` beside the checkout.

Tests read golden data, checkpoints and audio from ``../shared``. One switch decides
what may skip: when data or an optional part (PulseAudio, a browser, a broker, an optional
package) is missing the test is skipped, unless ``SOUNDWATCH_REQUIRE_SHARED=1`` (CI sets
it), in which case it fails.
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"


def unavailable(message: str) -> NoReturn:
    """Skip a test whose data or optional part is missing; fail it under CI."""
    if os.environ.get("SOUNDWATCH_REQUIRE_SHARED") == "1":
        pytest.fail(message + " (SOUNDWATCH_REQUIRE_SHARED=1: nothing may skip)")
    pytest.skip(message)


def shared_file(relative: str) -> Path:
    """Return ``../shared/<relative>``, skipping (or failing under CI) when it is absent."""
    path = SHARED / relative
    if not path.exists():
        unavailable(f"missing shared data file {path}")
    return path


def require_executable(name: str) -> str:
    """The path of a program the test needs (``chromium``, ``mosquitto``, ``pulseaudio``)."""
    found = shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/usr/bin", "/sbin") if os.access(p := f"{d}/{name}", os.X_OK)),
        None,
    )
    if found is None:
        unavailable(f"{name} is not installed (scripts/setup installs it)")
    return found


def require_module(name: str) -> ModuleType:
    """Import an optional package the test needs (``onnxruntime``, ``selenium``)."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        unavailable(f"{name} cannot be imported ({error}); scripts/setup installs it")


def resample_offline(samples: np.ndarray, orig_rate: int, new_rate: int = 32000) -> np.ndarray:
    """Reference for the streaming resampler: ``torchaudio.functional.resample`` of a whole
    mono float32 signal."""
    import torch
    import torchaudio

    x = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    if orig_rate == new_rate:
        return x.numpy().copy()
    return torchaudio.functional.resample(x, orig_rate, new_rate).numpy()


@pytest.fixture
def shared():
    """The ``shared_file`` helper as a fixture: ``shared("golden/frontend.npz")``."""
    return shared_file

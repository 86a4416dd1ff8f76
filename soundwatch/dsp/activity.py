"""Activity gating: is there anything new to hear in a window since the last one tagged?

A room is quiet most of the time, and a window of steady background sounds like the
window before it: running the model on it again yields (nearly) the same probabilities.
:class:`ActivityGate` compares each window of one stream and window series with the last
window that was actually run through the model (its *reference*), using the log-mel
frames the frontend already computed, pooled into 16 bands of 8 mel bins (tens of
microseconds of numpy per window). Windows overlap, so the current window differs from
the reference only by the frames that *entered* since the reference ended and the frames
that *left* (the reference's first ones); both are compared undiluted:

- **spectrum**: in every pooled band, the mean of the entered frames and the mean of the
  left frames against the reference's mean: a sound arriving or leaving moves some band;
- **level**: the loudest frame (mean over the mel bins) of the window against the
  reference's loudest: a short loud sound entering or leaving moves it.

When every change is under its threshold the window may be *carried*: its result is the
reference's probabilities, marked as carried. A window is always run when the stream has
no reference yet (start, after a gap, after a final window) or when the reference ended
``max_carry_s`` ago or longer, so a slow drift is re-heard at least that often.

Thresholds are in dB of mel power (the normalised log-mel is ``(ln(power) + 4.5) / 5``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from soundwatch.dsp.windows import FRAMES_PER_SECOND, MelWindow

#: dB of mel power per unit of the normalised log-mel: ``5 * 10 / ln(10)``.
DB_PER_UNIT = 50.0 / math.log(10.0)


@dataclass(frozen=True)
class GateSettings:
    """When a window counts as having nothing new to hear (see the module docstring)."""

    level_db: float = 2.0  # the loudest frame moved by less than this
    spectrum_db: float = 1.0  # no pooled band's mean moved by this much (entered or left)
    max_carry_s: float = 10.0  # the model hears the stream at least this often

    def __post_init__(self) -> None:
        if self.level_db <= 0 or self.spectrum_db <= 0 or self.max_carry_s <= 0:
            raise ValueError("gate thresholds and max_carry_s must be positive")


#: Mel bins pooled into one band for the comparison (128 bins -> 16 bands): fewer, wider
#: bands average out the frame-to-frame noise of a steady background.
POOL = 8


@dataclass(frozen=True)
class _Reference:
    stop: int  # the reference window's last frame + 1
    pooled: np.ndarray  # [bands, frames] the reference window's pooled frames
    means: np.ndarray  # [bands, 1] their means over the window
    peak: float  # the loudest frame's mean level


def _pooled(mel: np.ndarray) -> np.ndarray:
    bins, frames = mel.shape
    bands = bins // POOL
    return mel[: bands * POOL].reshape(bands, POOL, frames).mean(axis=1)


class ActivityGate:
    """One stream's gate for one window series: :meth:`carry` says whether a window may
    take the last tagged window's result instead of a forward pass."""

    def __init__(self, settings: GateSettings) -> None:
        self.settings = settings
        self._level = settings.level_db / DB_PER_UNIT
        self._spectrum = settings.spectrum_db / DB_PER_UNIT
        self._max_carry = round(settings.max_carry_s * FRAMES_PER_SECOND)
        self._reference: _Reference | None = None

    def carry(self, window: MelWindow) -> bool:
        """True when ``window`` has nothing new to hear since the reference; otherwise the
        window becomes the reference (it must then be run through the model)."""
        reference = self._reference
        if window.final or window.mel.shape[1] == 0:
            self._reference = None  # the segment ends: its next window starts afresh
            return False
        pooled = _pooled(window.mel)
        peak = float(pooled.mean(axis=0).max())
        if (
            reference is not None
            and reference.pooled.shape == pooled.shape
            and reference.stop < window.stop < reference.stop + self._max_carry
            and abs(peak - reference.peak) < self._level
            and self._unchanged(reference, pooled, window.stop - reference.stop)
        ):
            return True
        means = pooled.mean(axis=1, keepdims=True)
        self._reference = _Reference(window.stop, pooled, means, peak)
        return False

    def forget(self) -> None:
        """Drop the reference (its result was lost): the next window is run."""
        self._reference = None

    def _unchanged(self, reference: _Reference, pooled: np.ndarray, moved: int) -> bool:
        moved = min(moved, pooled.shape[1])
        entered = pooled[:, pooled.shape[1] - moved :].mean(axis=1, keepdims=True)
        if float(np.abs(entered - reference.means).max()) >= self._spectrum:
            return False
        left = reference.pooled[:, :moved].mean(axis=1, keepdims=True)
        return float(np.abs(left - reference.means).max()) < self._spectrum

"""Activity gating: is there anything new to hear in a window since the last one tagged?

A room is quiet most of the time, and a window of steady background sounds like the
window before it: running the model on it again yields (nearly) the same probabilities.
:class:`ActivityGate` compares each window of one stream and window series with the last
window that was actually run through the model (its *reference*), using statistics of the
log-mel frames the frontend already computed (a few microseconds of numpy per window):

- **level**: the window's mean frame level and its loudest frame (the mean over the mel
  bands of one frame) against the reference's: a sound entering the window raises them, one
  leaving it lowers them;
- **spectrum**: the mean absolute difference, over the mel bands, between the window's
  band means and the reference's; and the same for the frames new since the reference
  ended (undiluted by the overlap), so a quiet sound of a different colour also counts.

When every change is under its threshold the window may be *carried*: its result is the
reference's probabilities, marked as carried. A window is always run when the stream has
no reference yet (start, after a gap, after a final window) or when the reference is
older than ``max_carry_s``, so a slow drift is re-heard at least that often.

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

    level_db: float = 3.0  # mean or loudest frame level moved by less than this
    spectrum_db: float = 1.5  # mean absolute change of the mel band means under this
    max_carry_s: float = 10.0  # the model hears the stream at least this often

    def __post_init__(self) -> None:
        if self.level_db <= 0 or self.spectrum_db <= 0 or self.max_carry_s <= 0:
            raise ValueError("gate thresholds and max_carry_s must be positive")


@dataclass(frozen=True)
class _Reference:
    stop: int  # the reference window's last frame + 1
    band_means: np.ndarray  # [bands]
    mean_level: float
    peak_level: float


def _stats(mel: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Band means, mean frame level and loudest frame level of ``mel`` [bands, frames]."""
    band_means = mel.mean(axis=1)
    levels = mel.mean(axis=0)
    return band_means, float(band_means.mean()), float(levels.max())


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
        mel = window.mel
        reference = self._reference
        if window.final or mel.shape[1] == 0:
            self._reference = None  # the segment ends: its next window starts afresh
            return False
        band_means, mean_level, peak_level = _stats(mel)
        if (
            reference is not None
            and reference.stop < window.stop < reference.stop + self._max_carry
            and self._unchanged(reference, mel, window.stop, band_means, mean_level, peak_level)
        ):
            return True
        self._reference = _Reference(window.stop, band_means, mean_level, peak_level)
        return False

    def forget(self) -> None:
        """Drop the reference (its result was lost): the next window is run."""
        self._reference = None

    def _unchanged(
        self,
        reference: _Reference,
        mel: np.ndarray,
        stop: int,
        band_means: np.ndarray,
        mean_level: float,
        peak_level: float,
    ) -> bool:
        if abs(mean_level - reference.mean_level) >= self._level:
            return False
        if abs(peak_level - reference.peak_level) >= self._level:
            return False
        if float(np.abs(band_means - reference.band_means).mean()) >= self._spectrum:
            return False
        new = min(stop - reference.stop, mel.shape[1])  # frames after the reference ended
        new_means = mel[:, mel.shape[1] - new :].mean(axis=1)
        return float(np.abs(new_means - reference.band_means).mean()) < self._spectrum

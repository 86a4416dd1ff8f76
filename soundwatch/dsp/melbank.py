"""The Kaldi-style mel filterbank the EfficientAT taggers were trained with, dense and sparse.

The filterbank follows Kaldi's formula (as in ``torchaudio.compliance.kaldi.get_mel_banks``
without VTLN warping): triangles that are linear in the mel scale ``1127 ln(1 + f / 700)``,
``n_mels + 2`` equally spaced mel edges between ``fmin`` and ``fmax``, evaluated at the FFT
bin centres ``k * sample_rate / n_fft`` for ``k < n_fft / 2``. The Nyquist bin gets a zero
column, giving ``n_fft // 2 + 1`` columns to match a one-sided power spectrum.

Because the edges are equally spaced in mel, neighbouring triangles are complementary: an
FFT bin between the centres of filters ``b`` and ``b + 1`` gives weight ``1 - f`` to ``b``
and ``f`` to ``b + 1``, and nothing to any other filter. ``MelSegments`` stores that sparse
form (one segment index and one fraction per FFT bin), so the frontend visits each FFT bin
once instead of multiplying a 128 x 513 matrix (948 non-zero weights for the model's
settings).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _hz_to_mel(freq: np.ndarray | float) -> np.ndarray:
    """Kaldi's mel scale: ``1127 ln(1 + f / 700)``."""
    return 1127.0 * np.log1p(np.asarray(freq, dtype=np.float64) / 700.0)


def _mel_edges(
    n_mels: int, n_fft: int, sample_rate: float, fmin: float, fmax: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(edges, bin_mels)``: the ``n_mels + 2`` filter edges in mel (left of filter 0, the
    centres, right of the last filter) and the mel of each FFT bin ``k < n_fft / 2``."""
    if n_mels <= 3:
        raise ValueError(f"need at least 4 mel bins, got {n_mels}")
    if n_fft <= 0 or n_fft % 2:
        raise ValueError(f"n_fft must be a positive even number, got {n_fft}")
    nyquist = 0.5 * sample_rate
    if fmax <= 0.0:
        fmax += nyquist
    if not (0.0 <= fmin < nyquist and 0.0 < fmax <= nyquist and fmin < fmax):
        raise ValueError(f"bad band edges fmin={fmin}, fmax={fmax} for Nyquist {nyquist}")
    mel_low = _hz_to_mel(fmin)
    mel_delta = (_hz_to_mel(fmax) - mel_low) / (n_mels + 1)
    edges = mel_low + np.arange(n_mels + 2, dtype=np.float64) * mel_delta
    bin_mels = _hz_to_mel(sample_rate / n_fft * np.arange(n_fft // 2, dtype=np.float64))
    return edges, bin_mels


def kaldi_mel_banks(
    n_mels: int, n_fft: int, sample_rate: float, fmin: float, fmax: float
) -> np.ndarray:
    """Dense Kaldi mel filterbank, float64 ``[n_mels, n_fft // 2 + 1]`` (last column zero).

    ``fmax <= 0`` counts down from Nyquist, as in Kaldi. Raises ``ValueError`` on settings
    Kaldi rejects (fewer than 4 bins, odd ``n_fft``, band edges outside ``[0, Nyquist]``).
    """
    edges, bin_mels = _mel_edges(n_mels, n_fft, sample_rate, fmin, fmax)
    left = edges[:-2, None]
    centre = edges[1:-1, None]
    right = edges[2:, None]
    mel = bin_mels[None, :]
    up_slope = (mel - left) / (centre - left)
    down_slope = (right - mel) / (right - centre)
    weights = np.maximum(0.0, np.minimum(up_slope, down_slope))
    return np.pad(weights, ((0, 0), (0, 1)))


@dataclass(frozen=True)
class MelSegments:
    """The filterbank as complementary triangle halves, one entry per FFT bin.

    FFT bins ``bounds[s + 1] <= k < bounds[s + 2]`` form segment ``s`` (``-1 <= s < n_mels``),
    the bins between the centres of filters ``s`` and ``s + 1``; bin ``k`` adds
    ``(1 - fraction[k]) * power[k]`` to filter ``s`` and ``fraction[k] * power[k]`` to filter
    ``s + 1`` (filters ``-1`` and ``n_mels`` do not exist). Bins outside
    ``[bounds[0], bounds[-1])`` have no weight anywhere.
    """

    bounds: np.ndarray  # int64 [n_mels + 2]
    fraction: np.ndarray  # float64 [bounds[-1]]: weight into the upper filter of the segment
    n_fft_bins: int

    @property
    def n_mels(self) -> int:
        """Number of mel bins."""
        return int(self.bounds.shape[0]) - 2

    def to_dense(self) -> np.ndarray:
        """The dense ``[n_mels, n_fft_bins]`` matrix this form stands for."""
        dense = np.zeros((self.n_mels, self.n_fft_bins), dtype=np.float64)
        for s in range(-1, self.n_mels):
            for k in range(self.bounds[s + 1], self.bounds[s + 2]):
                if s >= 0:
                    dense[s, k] = 1.0 - self.fraction[k]
                if s + 1 < self.n_mels:
                    dense[s + 1, k] = self.fraction[k]
        return dense

    def apply(self, power: np.ndarray) -> np.ndarray:
        """Mel energies of one power spectrum ``[n_fft_bins]`` (a slow reference in numpy)."""
        return self.to_dense() @ power


def mel_segments(
    n_mels: int, n_fft: int, sample_rate: float, fmin: float, fmax: float
) -> MelSegments:
    """The ``kaldi_mel_banks`` filterbank in segment form, checked against the dense one."""
    edges, bin_mels = _mel_edges(n_mels, n_fft, sample_rate, fmin, fmax)
    inside = np.flatnonzero((bin_mels > edges[0]) & (bin_mels < edges[-1]))
    first, stop = int(inside[0]), int(inside[-1]) + 1
    # Segment of each bin: how many filter centres lie strictly below it, minus one.
    segment = np.searchsorted(edges[1:-1], bin_mels[:stop], side="left") - 1
    segment[:first] = -1
    lower = edges[segment + 1]  # centre of filter s (edges[0] for s = -1)
    upper = edges[segment + 2]  # centre of filter s + 1 (edges[-1] for s = n_mels - 1)
    fraction = (bin_mels[:stop] - lower) / (upper - lower)
    fraction[:first] = 0.0
    bounds = np.empty(n_mels + 2, dtype=np.int64)
    bounds[0] = first
    bounds[1:] = np.searchsorted(segment[first:], np.arange(n_mels + 1), side="left") + first
    result = MelSegments(
        bounds=bounds, fraction=np.ascontiguousarray(fraction), n_fft_bins=n_fft // 2 + 1
    )
    dense = kaldi_mel_banks(n_mels, n_fft, sample_rate, fmin, fmax)
    error = float(np.abs(result.to_dense() - dense).max())
    if error > 1e-9:  # cannot happen for Kaldi's equally spaced edges; guards the derivation
        raise ValueError(f"segment form differs from the dense filterbank by {error:g}")
    return result

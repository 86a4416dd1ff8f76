"""The Kaldi-style mel filterbank the EfficientAT taggers were trained with, dense and sparse.

The filterbank follows Kaldi's formula (as in ``torchaudio.compliance.kaldi.get_mel_banks``
without VTLN warping): triangles that are linear in the mel scale ``1127 ln(1 + f / 700)``,
``n_mels + 2`` equally spaced mel edges between ``fmin`` and ``fmax``, evaluated at the FFT
bin centres ``k * sample_rate / n_fft`` for ``k < n_fft / 2``. The Nyquist bin gets a zero
column, giving ``n_fft // 2 + 1`` columns to match a one-sided power spectrum.

Each triangle covers only a few FFT bins (948 non-zero weights out of 128 x 513 for the
model's settings), so the frontend applies the sparse form: per mel bin, the first FFT bin
and the run of weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _hz_to_mel(freq: np.ndarray | float) -> np.ndarray:
    """Kaldi's mel scale: ``1127 ln(1 + f / 700)``."""
    return 1127.0 * np.log1p(np.asarray(freq, dtype=np.float64) / 700.0)


def kaldi_mel_banks(
    n_mels: int, n_fft: int, sample_rate: float, fmin: float, fmax: float
) -> np.ndarray:
    """Dense Kaldi mel filterbank, float64 ``[n_mels, n_fft // 2 + 1]`` (last column zero).

    ``fmax <= 0`` counts down from Nyquist, as in Kaldi. Raises ``ValueError`` on settings
    Kaldi rejects (fewer than 4 bins, odd ``n_fft``, band edges outside ``[0, Nyquist]``).
    """
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
    mel_high = _hz_to_mel(fmax)
    mel_delta = (mel_high - mel_low) / (n_mels + 1)
    bins = np.arange(n_mels, dtype=np.float64)[:, None]
    left = mel_low + bins * mel_delta
    centre = mel_low + (bins + 1.0) * mel_delta
    right = mel_low + (bins + 2.0) * mel_delta

    fft_bin_width = sample_rate / n_fft
    mel = _hz_to_mel(fft_bin_width * np.arange(n_fft // 2, dtype=np.float64))[None, :]
    up_slope = (mel - left) / (centre - left)
    down_slope = (right - mel) / (right - centre)
    weights = np.maximum(0.0, np.minimum(up_slope, down_slope))
    return np.pad(weights, ((0, 0), (0, 1)))


@dataclass(frozen=True)
class SparseMelBank:
    """A filterbank stored as one run of weights per mel bin.

    Mel bin ``b`` is ``sum(weights[offsets[b]:offsets[b + 1]] * power[starts[b]:starts[b] +
    offsets[b + 1] - offsets[b]])``. ``n_bins_used`` is one past the highest FFT bin any
    filter touches: the frontend never needs the spectrum above it.
    """

    starts: np.ndarray  # int64 [n_mels]: first FFT bin of each filter
    offsets: np.ndarray  # int64 [n_mels + 1]: where each filter's run begins in ``weights``
    weights: np.ndarray  # float64 [nnz]
    n_fft_bins: int
    n_bins_used: int

    @property
    def n_mels(self) -> int:
        """Number of mel bins."""
        return int(self.starts.shape[0])

    def to_dense(self) -> np.ndarray:
        """The dense ``[n_mels, n_fft_bins]`` matrix this sparse form stands for."""
        dense = np.zeros((self.n_mels, self.n_fft_bins), dtype=np.float64)
        for b in range(self.n_mels):
            run = self.weights[self.offsets[b] : self.offsets[b + 1]]
            dense[b, self.starts[b] : self.starts[b] + run.shape[0]] = run
        return dense


def sparsify(dense: np.ndarray) -> SparseMelBank:
    """Compress a dense filterbank to one contiguous run per row (zeros inside a run kept).

    A row with no non-zero weight gets an empty run (its mel value is then ``log(1e-5)``).
    """
    n_mels, n_fft_bins = dense.shape
    starts = np.zeros(n_mels, dtype=np.int64)
    offsets = np.zeros(n_mels + 1, dtype=np.int64)
    runs: list[np.ndarray] = []
    n_bins_used = 0
    for b in range(n_mels):
        nonzero = np.flatnonzero(dense[b])
        if nonzero.size == 0:
            run = np.zeros(0, dtype=np.float64)
        else:
            first, last = int(nonzero[0]), int(nonzero[-1])
            starts[b] = first
            run = np.asarray(dense[b, first : last + 1], dtype=np.float64)
            n_bins_used = max(n_bins_used, last + 1)
        runs.append(run)
        offsets[b + 1] = offsets[b] + run.shape[0]
    weights = np.concatenate(runs) if runs else np.zeros(0, dtype=np.float64)
    return SparseMelBank(
        starts=starts,
        offsets=offsets,
        weights=np.ascontiguousarray(weights),
        n_fft_bins=n_fft_bins,
        n_bins_used=n_bins_used,
    )

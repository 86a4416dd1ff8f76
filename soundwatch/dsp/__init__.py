"""Log-mel frontend: 32 kHz mono audio -> the 128-bin normalised log-mel the taggers expect.

``logmel(wave)`` for whole waveforms, ``StreamingLogMel`` for live audio in chunks (frame
``i`` centred at input sample ``i * HOP``), ``warmup()`` to compile the numba kernels
before the first audio arrives.
"""

from soundwatch.dsp.logmel import logmel, warmup
from soundwatch.dsp.melbank import MelSegments, kaldi_mel_banks, mel_segments
from soundwatch.dsp.streaming import LOOKAHEAD_SAMPLES, StreamingLogMel
from soundwatch.dsp.tables import (
    FMAX,
    FMIN,
    HOP,
    MEL_SEGMENTS,
    N_FFT,
    N_MELS,
    SAMPLE_RATE,
    WIN_LENGTH,
    frames_for_samples,
)

__all__ = [
    "FMAX",
    "FMIN",
    "HOP",
    "LOOKAHEAD_SAMPLES",
    "MEL_SEGMENTS",
    "N_FFT",
    "N_MELS",
    "SAMPLE_RATE",
    "WIN_LENGTH",
    "MelSegments",
    "StreamingLogMel",
    "frames_for_samples",
    "kaldi_mel_banks",
    "logmel",
    "mel_segments",
    "warmup",
]

"""Room-like augmentation for a handful of examples: what changes between the recording a
user made and the sound the microphone will hear later.

- gain: the sound nearer or farther (a level change, in dB);
- background: the user's own room (their ``--negatives`` recordings, else coloured noise)
  mixed in at a random signal-to-noise ratio;
- time shift: the sound at another place in the window (windows start on a fixed grid, so
  a shifted copy gives windows that cut the sound elsewhere);
- device: Freq-MixStyle (Schmid et al., DCASE 2022): each window's per-frequency mean and
  spread of the log-mel, which carry the microphone's and the room's colouring, are mixed
  with those of another window, keeping the sound's time structure.

Everything takes a :class:`numpy.random.Generator`, so a seed gives the same head.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SAMPLE_RATE = 32000


def gain(wave: np.ndarray, rng: np.random.Generator, low_db: float, high_db: float) -> np.ndarray:
    """The wave scaled by a random gain in ``[low_db, high_db]``."""
    return wave * np.float32(10 ** (rng.uniform(low_db, high_db) / 20))


def shift(wave: np.ndarray, rng: np.random.Generator, max_s: float) -> np.ndarray:
    """The wave with up to ``max_s`` seconds cut from its start (moves the window grid)."""
    cut = int(rng.integers(0, max(1, int(max_s * SAMPLE_RATE))))
    return wave[cut:] if len(wave) - cut >= SAMPLE_RATE // 10 else wave


def place_in(
    wave: np.ndarray, length: int, background: np.ndarray | None, rng: np.random.Generator
) -> np.ndarray:
    """A clip shorter than a window, placed at a random offset in ``length`` samples of
    ``background`` (silence when None): what a live window around the sound holds."""
    if len(wave) >= length:
        return wave
    out = np.zeros(length, np.float32) if background is None else loop_to(background, length, rng)
    at = int(rng.integers(0, length - len(wave) + 1))
    out[at : at + len(wave)] += wave
    return out


def loop_to(background: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """``length`` samples of ``background`` from a random point, looped as needed."""
    start = int(rng.integers(0, len(background)))
    reps = -(-(start + length) // len(background))
    return np.tile(background, reps)[start : start + length].astype(np.float32, copy=True)


def rms(wave: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)) + 1e-12))


def mix(
    wave: np.ndarray,
    background: np.ndarray,
    rng: np.random.Generator,
    snr_low_db: float,
    snr_high_db: float,
) -> np.ndarray:
    """``wave`` with ``background`` mixed in at a random SNR in ``[snr_low_db, snr_high_db]``."""
    noise = loop_to(background, len(wave), rng)
    snr = rng.uniform(snr_low_db, snr_high_db)
    scale = rms(wave) / (rms(noise) * 10 ** (snr / 20))
    return (wave + noise * np.float32(scale)).astype(np.float32, copy=False)


def coloured_noise(rng: np.random.Generator, seconds: float, exponent: float) -> np.ndarray:
    """Noise whose power falls as ``1 / f ** exponent`` (0 white, 1 pink, 2 brown), RMS 0.05."""
    n = int(seconds * SAMPLE_RATE)
    spectrum = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    f[0] = f[1]
    noise = np.fft.irfft(spectrum / f ** (exponent / 2), n).astype(np.float32)
    return noise * np.float32(0.05 / rms(noise))


def synthetic_backgrounds(rng: np.random.Generator, seconds: float = 10.0) -> list[np.ndarray]:
    """White, pink and brown noise: the background when the user gave none."""
    return [coloured_noise(rng, seconds, e) for e in (0.0, 1.0, 2.0)]


def freq_mixstyle(
    mels: Sequence[np.ndarray], rng: np.random.Generator, alpha: float = 0.4, p: float = 0.7
) -> list[np.ndarray]:
    """Freq-MixStyle on log-mel windows ``[128, T]``: with probability ``p`` a window's
    per-bin mean and standard deviation (over time) are mixed with another window's, by a
    ``Beta(alpha, alpha)`` weight."""
    if len(mels) < 2:
        return list(mels)
    stats = [(m.mean(axis=1, keepdims=True), m.std(axis=1, keepdims=True) + 1e-5) for m in mels]
    out = []
    for i, mel in enumerate(mels):
        if rng.random() >= p:
            out.append(mel)
            continue
        j = int(rng.integers(0, len(mels) - 1))
        j += j >= i
        lam = np.float32(rng.beta(alpha, alpha))
        (mu, sig), (mu2, sig2) = stats[i], stats[j]
        mixed_mu = lam * mu + (1 - lam) * mu2
        mixed_sig = lam * sig + (1 - lam) * sig2
        out.append(((mel - mu) / sig * mixed_sig + mixed_mu).astype(np.float32))
    return out

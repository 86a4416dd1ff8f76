"""A synthetic demo source: a repeating programme of recognisable sounds, made in code.

The programme cycles through segments, each a few seconds long: smoke-alarm beeps, a siren
(wail, yelp or hi-lo, with harmonics), bursts of white noise, a whistle and near-silence.
On a whole segment, the EfficientAT ``mn04`` tagger ranks these among its top 3 classes
(checked for seeds 0-3): "Smoke detector, smoke alarm" / "Beep, bleep", "Siren", "Static" /
"White noise", "Whistle", "Silence". Every segment's parameters come from ``numpy.random.default_rng
([seed, segment index])``, and a segment is rendered whole before being cut, so the output
is identical for a given seed whatever the read sizes. Generated directly at 32 kHz.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from soundwatch.errors import SoundwatchError
from soundwatch.stream.base import AudioBlock, Source, SourceStats
from soundwatch.stream.pacing import RealtimePacer
from soundwatch.stream.resample import TARGET_RATE

RATE = TARGET_RATE


def _harmonic(phase: np.ndarray, harmonics: int = 6) -> np.ndarray:
    """A bright, sawtooth-like tone: real alarms are not pure sines."""
    return sum(np.sin(k * phase) / k for k in range(1, harmonics + 1)) / 1.5


def _beeps(rng: np.random.Generator, n: int) -> np.ndarray:
    """Smoke-alarm style beeps: a 3-3.4 kHz tone, a quarter second on and off."""
    t = np.arange(n) / RATE
    freq = rng.uniform(3000.0, 3400.0)
    period = rng.uniform(0.4, 0.6)
    on = (t % period) < period / 2
    return (0.4 * np.sin(2 * np.pi * freq * t) * on).astype(np.float32)


def _siren(rng: np.random.Generator, n: int) -> np.ndarray:
    """An emergency siren: slow wail, fast yelp or two-tone hi-lo, with harmonics."""
    t = np.arange(n) / RATE
    style = rng.integers(3)
    if style == 0:  # wail
        low, high = rng.uniform(550, 700), rng.uniform(1300, 1600)
        freq = low + (high - low) * 0.5 * (1 - np.cos(2 * np.pi * rng.uniform(0.2, 0.3) * t))
    elif style == 1:  # yelp
        rate = rng.uniform(2.5, 3.5)
        freq = 700 + 700 * ((t * rate) % 1)
    else:  # hi-lo
        freq = np.where((t % 1.0) < 0.5, 960.0, 770.0)
    phase = 2 * np.pi * np.cumsum(freq) / RATE
    return (0.3 * _harmonic(phase)).astype(np.float32)


def _noise_bursts(rng: np.random.Generator, n: int) -> np.ndarray:
    """White noise switched on and off (static)."""
    t = np.arange(n) / RATE
    burst = rng.uniform(0.4, 0.8)
    gate = (t % (2 * burst)) < burst
    return (0.2 * rng.standard_normal(n) * gate).astype(np.float32)


def _whistle(rng: np.random.Generator, n: int) -> np.ndarray:
    """A whistle: a 2.5-2.8 kHz tone with a 200 Hz, ~6 Hz vibrato."""
    t = np.arange(n) / RATE
    freq = rng.uniform(2500, 2800) + 200 * np.sin(2 * np.pi * rng.uniform(5.5, 6.5) * t)
    return (0.3 * np.sin(2 * np.pi * np.cumsum(freq) / RATE)).astype(np.float32)


def _quiet(rng: np.random.Generator, n: int) -> np.ndarray:
    return (0.001 * rng.standard_normal(n)).astype(np.float32)


#: (name, seconds, generator) in programme order.
PROGRAMME: tuple[tuple[str, float, Callable[[np.random.Generator, int], np.ndarray]], ...] = (
    ("beeps", 4.0, _beeps),
    ("siren", 5.0, _siren),
    ("noise bursts", 3.0, _noise_bursts),
    ("whistle", 3.0, _whistle),
    ("quiet", 2.0, _quiet),
)


def render_segment(seed: int, index: int) -> tuple[str, np.ndarray]:
    """Segment ``index`` of the programme for ``seed``: its name and samples."""
    name, seconds, generate = PROGRAMME[index % len(PROGRAMME)]
    rng = np.random.default_rng([seed, index])
    return name, generate(rng, int(seconds * RATE))


class SyntheticSource(Source):
    """Deterministic demo audio; real-time paced by default (``pace="fast"`` for tests)."""

    def __init__(
        self,
        stream_id: str = "synthetic",
        *,
        seed: int = 0,
        pace: str = "realtime",
        duration: float | None = None,
    ):
        if pace not in ("realtime", "fast"):
            raise SoundwatchError(f"unknown pace {pace!r}; use realtime or fast")
        self.id = stream_id
        self.native_rate = RATE
        self.channels = 1
        self.seed = int(seed)
        self.pace = pace
        self.duration = duration
        self._total = None if duration is None else int(duration * RATE)
        self._segment_index = -1
        self._segment = np.zeros(0, dtype=np.float32)
        self._segment_start = 0
        self._produced = 0
        self._started = False
        self._stopped = False
        self._t_open = 0.0
        self._pacer = RealtimePacer(RATE)

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._t_open = time.time()
        self._pacer.start()

    def stop(self) -> None:
        self._stopped = True

    @property
    def ended(self) -> bool:
        return self._stopped or (self._total is not None and self._produced >= self._total)

    @property
    def waits_when_behind(self) -> bool:
        """Fast pace is pull-driven (like a fast file); real time runs on the clock."""
        return self.pace == "fast"

    def stats(self) -> SourceStats:
        return SourceStats(samples_in=self._produced)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "synthetic",
            "id": self.id,
            "seed": self.seed,
            "pace": self.pace,
            "native_rate": RATE,
            "channels": 1,
            "programme": [name for name, _, _ in PROGRAMME],
        }

    def generate(self, n: int) -> np.ndarray:
        """The next ``n`` samples of the programme (advances the position)."""
        parts = []
        while n > 0:
            offset = self._produced - self._segment_start
            if offset >= len(self._segment):
                self._segment_start += len(self._segment)
                self._segment_index += 1
                _, self._segment = render_segment(self.seed, self._segment_index)
                continue
            take = min(n, len(self._segment) - offset)
            parts.append(self._segment[offset : offset + take])
            self._produced += take
            n -= take
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def read(self, timeout: float) -> AudioBlock | None:
        if not self._started:
            raise SoundwatchError(f"synthetic source {self.id!r} was not started")
        if self.ended:
            return None
        if self.pace == "fast":
            n = self._available(int(RealtimePacer.MAX_RELEASE_SECONDS * RATE))
        else:
            n = self._pacer.next_release(self._produced, self._available, timeout)
        if n == 0:
            return None
        t_start = self._t_open + self._produced / RATE
        samples = self.generate(n)
        fast = self.pace == "fast"
        t_ingest = time.monotonic() if fast else self._pacer.ingest_time(self._produced)
        return AudioBlock(samples, t_start, t_ingest)

    def _available(self, want: int) -> int:
        """How many of the next ``want`` samples exist (fewer only with a ``duration``)."""
        if self._total is None:
            return want
        return max(0, min(want, self._total - self._produced))

"""An audio file as a stream, at wall-clock pace or as fast as the pipeline pulls.

* ``pace="realtime"``: audio is released as wall-clock time passes since ``start()``, like a
  microphone; ``read`` waits for it.
* ``pace="fast"``: ``read`` returns the next decoded block at once (pull-driven, nothing is
  dropped); the blocks concatenated equal ``read_audio_file(path)`` exactly.

``loop`` restarts the file seamlessly (the resampler runs across the seam) and ``t_start``
keeps increasing. In both paces sample ``n`` is stamped ``t_open + n / 32000`` where
``t_open`` is the Unix time of ``start()``: in fast mode these are the times the audio
*would* have been captured in real time, so event times stay in the file's timeline.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from soundwatch.errors import SoundwatchError
from soundwatch.stream.base import AudioBlock, Source, SourceStats
from soundwatch.stream.decode import DECODE_BLOCK_FRAMES, audio_file_info, iter_resampled
from soundwatch.stream.pacing import RealtimePacer
from soundwatch.stream.resample import TARGET_RATE

PACES = ("realtime", "fast")


class FileSource(Source):
    """Decoded audio file; see the module docstring for pacing and timestamps."""

    def __init__(
        self,
        stream_id: str,
        path: str | Path,
        *,
        pace: str = "realtime",
        loop: bool = False,
        block_frames: int = DECODE_BLOCK_FRAMES,
    ):
        if pace not in PACES:
            raise SoundwatchError(f"unknown pace {pace!r}; use one of: {', '.join(PACES)}")
        self.id = stream_id
        self.path = Path(path)
        self.pace = pace
        self.loop = bool(loop)
        self.native_rate, self.channels, self.frames = audio_file_info(self.path)
        if self.loop and self.frames == 0:
            raise SoundwatchError(f"cannot loop {str(self.path)!r}: the file has no audio")
        self._block_frames = block_frames
        self._blocks: Iterator[np.ndarray] | None = None
        self._exhausted = False
        self._pending = np.zeros(0, dtype=np.float32)  # decoded, not yet released
        self._released = 0  # 32 kHz samples returned so far
        self._decoded_native = 0
        self._t_open = 0.0
        self._pacer = RealtimePacer()

    def start(self) -> None:
        if self._blocks is not None:
            return
        self._blocks = iter_resampled(
            self.path, loop=self.loop, block_frames=self._block_frames, on_decoded=self._count
        )
        self._t_open = time.time()
        self._pacer.start()

    def stop(self) -> None:
        if self._blocks is not None and hasattr(self._blocks, "close"):
            self._blocks.close()  # closes the SoundFile
        self._exhausted = True
        self._pending = np.zeros(0, dtype=np.float32)

    @property
    def ended(self) -> bool:
        return self._exhausted and len(self._pending) == 0

    @property
    def waits_when_behind(self) -> bool:
        """Fast pace is pull-driven: the pipeline waits, so every window is tagged."""
        return self.pace == "fast"

    def stats(self) -> SourceStats:
        return SourceStats(samples_in=self._decoded_native)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "file",
            "id": self.id,
            "path": str(self.path),
            "pace": self.pace,
            "loop": self.loop,
            "native_rate": self.native_rate,
            "channels": self.channels,
            "duration": self.frames / self.native_rate if self.native_rate else 0.0,
        }

    def _count(self, frames: int) -> None:
        self._decoded_native += frames

    def _decode_next(self) -> bool:
        """Append the next decoded block to ``_pending``; False at the end of the file."""
        if self._exhausted:
            return False
        if self._blocks is None:
            raise SoundwatchError(f"file source {self.id!r} was not started")
        try:
            block = next(self._blocks)
        except StopIteration:
            self._exhausted = True
            return False
        self._pending = np.concatenate((self._pending, block)) if len(self._pending) else block
        return True

    def _release(self, n: int, t_ingest: float | None = None) -> AudioBlock:
        samples = np.ascontiguousarray(self._pending[:n])
        self._pending = self._pending[n:]
        t_start = self._t_open + self._released / TARGET_RATE
        self._released += n
        if t_ingest is None:
            t_ingest = time.monotonic()
        return AudioBlock(samples, t_start, t_ingest)

    def read(self, timeout: float) -> AudioBlock | None:
        if self.pace == "fast":
            if not len(self._pending) and not self._decode_next():
                return None
            return self._release(len(self._pending))
        return self._read_realtime(timeout)

    def _read_realtime(self, timeout: float) -> AudioBlock | None:
        if self.ended:
            return None
        n = self._pacer.next_release(self._released, self._decode_up_to, timeout)
        if n == 0:
            return None
        return self._release(n, self._pacer.ingest_time(self._released + n))

    def _decode_up_to(self, want: int) -> int:
        """Decode until ``want`` samples are pending (fewer at the end); how many are."""
        while len(self._pending) < want and self._decode_next():
            pass
        return min(want, len(self._pending))

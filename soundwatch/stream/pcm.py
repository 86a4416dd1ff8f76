"""Raw PCM from standard input (or a named pipe), e.g. ``ffmpeg ... -f s16le - |``.

A reader thread reads the byte stream in chunks, converts whole frames to float32 and
stores them in the ring. When the ring is full it waits (back-pressure on the producing
process) instead of dropping, and ``waits_when_behind`` tells the pipeline to wait for
inference rather than drop windows: a producer that runs faster than the pipeline, like
ffmpeg decoding a file, is slowed down and every window of its audio is tagged; a live
producer (``arecord``) then reports its own overruns. End of input ends the source once
everything was read.

Timing: there is no capture clock in a byte stream, so sample ``n`` is stamped
``t_first_byte + n / rate``, where ``t_first_byte`` is the Unix time the first bytes
arrived.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from soundwatch.errors import SoundwatchError
from soundwatch.stream.base import RingSource

log = logging.getLogger(__name__)

#: Supported sample formats: numpy dtype, scale to [-1, 1), offset subtracted first.
PCM_FORMATS: dict[str, tuple[str, float, float]] = {
    "s16le": ("<i2", 32768.0, 0.0),
    "s32le": ("<i4", 2147483648.0, 0.0),
    "f32le": ("<f4", 1.0, 0.0),
    "f64le": ("<f8", 1.0, 0.0),
    "u8": ("u1", 128.0, 128.0),
}


@dataclass(frozen=True)
class PcmFormat:
    """Layout of the raw stream: sample format, interleaved channels, sample rate."""

    rate: int = 16000
    channels: int = 1
    format: str = "s16le"

    def __post_init__(self) -> None:
        if self.format not in PCM_FORMATS:
            raise SoundwatchError(
                f"unknown PCM format {self.format!r}; use one of: {', '.join(PCM_FORMATS)}"
            )
        if self.rate <= 0 or self.channels <= 0:
            raise SoundwatchError(
                f"PCM rate and channels must be positive (got rate={self.rate}, "
                f"channels={self.channels})"
            )

    @property
    def frame_bytes(self) -> int:
        return np.dtype(PCM_FORMATS[self.format][0]).itemsize * self.channels

    def decode(self, data: bytes) -> np.ndarray:
        """Whole frames of ``data`` as ``(frames, channels)`` float32 in [-1, 1)."""
        dtype, scale, offset = PCM_FORMATS[self.format]
        raw = np.frombuffer(data, dtype=dtype).reshape(-1, self.channels)
        out = raw.astype(np.float32)
        if offset:
            out -= offset
        if scale != 1.0:
            out *= np.float32(1.0 / scale)
        return out


class PcmSource(RingSource):
    """Raw interleaved PCM read from a binary stream (default: ``sys.stdin.buffer``)."""

    CHUNK_SECONDS = 0.02
    #: ``stop`` waits this long for the reader thread (it checks for stop every 0.1 s).
    STOP_TIMEOUT_SECONDS = 5.0

    def __init__(
        self,
        stream_id: str = "pcm",
        pcm_format: PcmFormat | None = None,
        *,
        stream: BinaryIO | int | None = None,
        path: str | None = None,
        ring_seconds: float = 10.0,
    ):
        self.pcm_format = pcm_format or PcmFormat()
        super().__init__(stream_id, self.pcm_format.rate, self.pcm_format.channels, ring_seconds)
        self._path = path
        self._stream = stream
        self._fd: int | None = None
        self._owns_fd = False
        frames = max(1, int(self.CHUNK_SECONDS * self.pcm_format.rate))
        self._chunk_bytes = frames * self.pcm_format.frame_bytes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t_first: float | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._fd = self._open_input()
        self._thread = threading.Thread(
            target=self._run, name=f"soundwatch-pcm-{self.id}", daemon=True
        )
        self._thread.start()

    def _open_input(self) -> int:
        if self._path is not None:
            try:
                fd = os.open(self._path, os.O_RDONLY)
            except OSError as error:
                raise SoundwatchError(f"cannot open PCM input {self._path!r}: {error}") from None
            self._owns_fd = True
            return fd
        stream: Any = self._stream if self._stream is not None else sys.stdin.buffer
        fd = stream if isinstance(stream, int) else stream.fileno()
        if self._stream is None and os.isatty(fd):
            raise SoundwatchError(
                "pcm:- reads raw PCM from standard input, but stdin is a terminal; pipe audio "
                "in, e.g. ffmpeg -i INPUT -f s16le -ac 1 -ar 16000 - | soundwatch run "
                "--source pcm:-"
            )
        return fd

    @property
    def waits_when_behind(self) -> bool:
        """A pipe can wait: the pipeline waits for inference, so every window is tagged."""
        return True

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.STOP_TIMEOUT_SECONDS)
            if thread.is_alive():  # cannot happen unless a read blocks despite select
                log.warning(
                    "PCM reader of stream %r did not stop within %.0f s; leaving it (daemon "
                    "thread) and its input open",
                    self.id,
                    self.STOP_TIMEOUT_SECONDS,
                )
                return
        if self._owns_fd and self._fd is not None:
            os.close(self._fd)
            self._owns_fd = False

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "pcm",
            "id": self.id,
            "input": self._path or "stdin",
            "format": self.pcm_format.format,
            "native_rate": self.native_rate,
            "channels": self.channels,
            "ring_seconds": self.ring_seconds,
        }

    # ---------------------------------------------------------------- reader thread
    def _run(self) -> None:
        fd = self._fd
        assert fd is not None
        frame_bytes = self.pcm_format.frame_bytes
        carry = b""
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([fd], [], [], 0.1)
                if not ready:
                    continue
                data = os.read(fd, self._chunk_bytes)
                if not data:
                    break
                if self._t_first is None:
                    self._t_first = time.time()
                data = carry + data
                whole = len(data) - len(data) % frame_bytes
                carry = data[whole:]
                if whole:
                    self._store(self.pcm_format.decode(data[:whole]))
        except OSError as error:
            log.warning(
                "PCM input %r (stream %r) failed: %s", self._path or "stdin", self.id, error
            )
        if carry:
            log.warning(
                "PCM input %r ended with %d byte(s) that do not form a whole frame "
                "(%d bytes per frame); they were ignored",
                self._path or "stdin",
                len(carry),
                frame_bytes,
            )
        self._producer_done = True

    def _store(self, frames: np.ndarray) -> None:
        """Store the frames, waiting for room as often as needed (back-pressure: the pipe
        fills and the producing process waits); returns early only when stopped."""
        assert self._t_first is not None
        done = 0
        while done < len(frames):
            room = min(self._ring.free(), len(frames) - done)
            if room <= 0:
                if self._stop.wait(self.POLL_SECONDS):
                    return
                continue
            t_first = self._t_first + self._samples_in / self.native_rate
            self._produce(frames[done : done + room], t_first)
            done += room

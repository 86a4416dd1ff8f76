"""Microphone capture through PortAudio (sounddevice ``InputStream`` with a callback).

The PortAudio callback only copies into the preallocated ``SpscRing`` and counts: it never
blocks, allocates arrays, locks or logs. A supervisor thread watches the stream and, when the
device is lost (PortAudio error, PulseAudio daemon gone, no callback for ``stall_seconds``),
closes it, reports it at once (``device_losses`` counted; ``device_lost`` = 1 and
``device_lost_seconds`` in status until the device is back), and keeps reopening the device
with capped exponential backoff (0.25 s, doubling to at most 5 s between attempts; every
outage starts at 0.25 s again); a reopened device counts a restart and, with its first
audio, a gap.

Timestamps: at open, the offset between PortAudio's stream clock and Unix time is measured;
each callback's ``inputBufferAdcTime`` (or, when PortAudio reports none or no stream time,
``time.time()`` minus the buffer's duration) gives the capture time of its first frame.
Blocks are stamped from a frame counter (anchor time + frames since anchor / rate) so
consecutive blocks are exactly contiguous, and the counter is held to the real clock both
ways:

* behind: when a callback's own time is later than the counter's by more than the tolerance
  (lost samples, a stalled device, clock drift beyond it) or PortAudio reports an overflow,
  the timeline is re-anchored there and a gap is counted;
* ahead: a frame cannot be delivered before it was captured, so when a block would end
  later than the callback's own time (``currentTime``, mapped the same way; ``time.time()``
  when PortAudio reports none) by more than the tolerance, the device delivered
  more audio than real time (a sound server's backlog handed over at once, a fast device
  clock). That audio is skipped until the clock has caught up with the counter (then the
  next block would not end in the future): ``clock_resyncs`` and ``clock_skipped_samples``
  count it, and the next block starts a new segment whose time follows on (not a gap).
  Stamps therefore never run ahead of the real clock by more than the tolerance and a
  block.

A new anchor (a gap, a reopened device) is never earlier than the end of what was already
stamped: capture times only go forward within a source. Callbacks stamped early (a burst of
buffered audio with its earlier ADC time) keep the timeline: no sample was lost.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from soundwatch.errors import SoundwatchError
from soundwatch.stream.base import RingSource
from soundwatch.stream.devices import (
    DeviceInfo,
    PortAudioStreams,
    find_input_device,
    import_sounddevice,
)

log = logging.getLogger(__name__)


class MicrophoneSource(RingSource):
    """Records one input device. ``device`` is an index, part of a name, or None (default).

    ``channels`` is how many channels to record (averaged to mono); None means 1, whatever
    the device has (the host API or sound server downmixes). ``samplerate`` defaults to the
    device's default rate, ``blocksize`` to 20 ms of frames.
    """

    #: A callback time later than the frame counter's time by more than this means samples
    #: were lost: a discontinuity (at least; four callback periods when they are longer).
    #: A callback time *earlier* than the counter's is never a gap: sound servers deliver
    #: buffered audio in bursts (PulseAudio: 0.26 s to 1 s seen here) without losing any.
    #: A block ending later than the wall clock by more than this is audio beyond real time
    #: (skipped until the clock catches up: a clock resync).
    GAP_TOLERANCE_SECONDS = 0.5
    #: Reopen attempts wait this long at first, doubling up to ``MAX_BACKOFF_SECONDS``.
    FIRST_BACKOFF_SECONDS = 0.25
    MAX_BACKOFF_SECONDS = 5.0
    #: ``stop`` waits this long for the supervisor thread.
    STOP_TIMEOUT_SECONDS = 5.0

    def __init__(
        self,
        stream_id: str = "mic",
        device: str | int | None = None,
        *,
        channels: int | None = None,
        samplerate: int | None = None,
        blocksize: int | None = None,
        ring_seconds: float = 10.0,
        stall_seconds: float = 3.0,
    ):
        self._device: DeviceInfo = find_input_device(device)
        channels = 1 if channels is None else int(channels)
        if not 1 <= channels <= self._device.channels:
            raise SoundwatchError(
                f"input device {self._device.name!r} has {self._device.channels} input "
                f"channel(s); cannot record {channels}"
            )
        rate = int(samplerate) if samplerate else self._device.default_rate
        if rate <= 0:
            raise SoundwatchError(f"invalid sample rate {samplerate} for the microphone")
        super().__init__(stream_id, rate, channels, ring_seconds)
        self.blocksize = int(blocksize) if blocksize else max(1, rate // 50)
        self.stall_seconds = float(stall_seconds)
        self._tolerance = max(self.GAP_TOLERANCE_SECONDS, 4 * self.blocksize / rate)
        self._stream: Any = None
        self._stream_finished = False
        self._clock_offset = 0.0
        self._has_stream_clock = True  # PortAudio's stream time could be mapped to Unix time
        self._anchor_time = 0.0
        self._anchor_frame = 0
        self._anchored = False
        self._captured = 0  # frames of the current stream on its timeline (not skipped ones)
        self._skipping = False  # skipping audio beyond real time until the clock catches up
        self._stamped_until = 0.0  # Unix time just after the last produced frame
        self._last_callback = time.monotonic()
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._started = False

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self._started:
            return
        self._started = True
        try:
            self._open(self._device)
        except Exception as error:
            self._started = False
            raise SoundwatchError(
                f"cannot open input device {self._device.name!r} (index {self._device.index}, "
                f"{self.channels} ch, {self.native_rate} Hz): {error}"
            ) from None
        self._supervisor = threading.Thread(
            target=self._supervise, name=f"soundwatch-mic-{self.id}", daemon=True
        )
        self._supervisor.start()

    def stop(self) -> None:
        """Stop supervising and close the stream; waits at most ``STOP_TIMEOUT_SECONDS``.

        A supervisor stuck in a device call (a hung sound server) is left behind (it is a
        daemon thread, and closes what it opens once it sees the stop) and logged.
        """
        self._stop.set()
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None and supervisor is not threading.current_thread():
            supervisor.join(self.STOP_TIMEOUT_SECONDS)
            if supervisor.is_alive():
                log.warning(
                    "input device %r (stream %r): the supervisor did not stop within %.0f s "
                    "(stuck in a device call); leaving it behind",
                    self._device.name,
                    self.id,
                    self.STOP_TIMEOUT_SECONDS,
                )
        self._close()

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "mic",
            "id": self.id,
            "device": self._device.name,
            "device_index": self._device.index,
            "hostapi": self._device.hostapi,
            "native_rate": self.native_rate,
            "channels": self.channels,
            "blocksize": self.blocksize,
            "ring_seconds": self.ring_seconds,
        }

    # ---------------------------------------------------------------- PortAudio side
    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio thread: stamp, copy into the ring and count; nothing else."""
        self._last_callback = time.monotonic()
        overflow = bool(status.input_overflow)
        if overflow:
            self._overflows += 1
        rate = self.native_rate
        # the stream's clock (monotonic) mapped to Unix time: a step of the system clock
        # while the stream runs is not audio beyond real time
        clock = self._has_stream_clock
        current = time_info.currentTime
        now = current + self._clock_offset if clock and current > 0 else time.time()
        adc = time_info.inputBufferAdcTime
        t_callback = adc + self._clock_offset if clock and adc > 0 else now - frames / rate
        if self._anchored:
            t_first = self._anchor_time + (self._captured - self._anchor_frame) / rate
            if overflow or t_callback - t_first > self._tolerance:
                self._mark_discontinuity()
                self._anchored = False
                self._skipping = False
        if not self._anchored:  # never before what was stamped: times only go forward
            self._anchor_time = t_first = max(t_callback, self._stamped_until)
            self._anchor_frame = self._captured
            self._anchored = True
        t_end = t_first + frames / rate
        ahead = t_end - now
        if ahead > (0.0 if self._skipping else self._tolerance):  # audio beyond real time
            if not self._skipping:
                self._skipping = True
                self._clock_resyncs += 1
                self._mark_discontinuity(gap=False)
            self._clock_skipped += frames
            self._samples_in += frames
            return
        self._skipping = False
        self._captured += frames
        self._stamped_until = t_end
        self._produce(indata, t_first)

    def _finished_callback(self) -> None:
        self._stream_finished = True

    def _open(self, device: DeviceInfo) -> None:
        sd = import_sounddevice()
        stream = sd.InputStream(
            device=device.index,
            channels=self.channels,
            samplerate=self.native_rate,
            blocksize=self.blocksize,
            dtype="float32",
            callback=self._callback,
            finished_callback=self._finished_callback,
        )
        PortAudioStreams.opened()
        try:
            stream_time = stream.time
            self._has_stream_clock = stream_time > 0
            self._clock_offset = time.time() - stream_time if stream_time > 0 else 0.0
            self._stream_finished = False
            self._anchored = False
            self._skipping = False
            self._captured = 0
            self._mark_discontinuity()
            self._last_callback = time.monotonic()
            stream.start()
        except Exception:
            self._close_stream(stream)
            raise
        self._stream = stream
        self._device = device

    def _close_stream(self, stream: Any) -> None:
        try:
            stream.abort(ignore_errors=True)
            stream.close(ignore_errors=True)
        except Exception as error:  # a dead host API may refuse even this
            log.debug("closing the stream of %r failed: %s", self._device.name, error)
        finally:
            PortAudioStreams.closed()

    def _close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            self._close_stream(stream)

    # ---------------------------------------------------------------- supervision
    def _lost_reason(self) -> str | None:
        stream = self._stream
        if stream is None:
            return "stream closed"
        if self._stream_finished or not stream.active:
            return "the stream stopped (device error or disconnect)"
        silent = time.monotonic() - self._last_callback
        if silent > self.stall_seconds:
            return f"no audio for {silent:.1f} s"
        return None

    def _supervise(self) -> None:
        while not self._stop.wait(0.1):
            reason = self._lost_reason()
            if reason is None:
                continue
            self._device_losses += 1
            self._lost_since = time.monotonic()
            log.warning(
                "input device %r (stream %r) lost: %s; reopening (loss %d)",
                self._device.name,
                self.id,
                reason,
                self._device_losses,
            )
            self._close()
            self._reopen()

    def _reopen(self) -> None:
        """Try to reopen the device until it works or the source is stopped."""
        backoff = self.FIRST_BACKOFF_SECONDS
        attempt = 0
        while not self._stop.wait(backoff):
            attempt += 1
            try:
                device = self._find_again()
                self._open(device)
            except Exception as error:
                log.warning(
                    "input device %r (stream %r): reopen attempt %d failed: %s",
                    self._device.name,
                    self.id,
                    attempt,
                    error,
                )
                backoff = min(backoff * 2, self.MAX_BACKOFF_SECONDS)
                continue
            if self._stop.is_set():  # stopped while opening: stop() no longer waits
                self._close()
                return
            self._restarts += 1
            self._lost_since = None
            log.warning(
                "input device %r (stream %r) reopened after %d attempt(s)",
                self._device.name,
                self.id,
                attempt,
            )
            return

    def _find_again(self) -> DeviceInfo:
        """The same device by name; re-scans PortAudio's device list when it vanished."""
        try:
            return find_input_device(self._device.name)
        except SoundwatchError:
            if not PortAudioStreams.reinitialize_if_idle():
                raise
            return find_input_device(self._device.name)

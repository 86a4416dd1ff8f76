"""The microphone source through real PortAudio, recording a private PulseAudio daemon.

The ``pulse`` fixture (one daemon for the module) plays what a test feeds through a virtual
microphone; see ``tests/pulse_harness.py``.
"""

from __future__ import annotations

import builtins
import itertools
import os
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import resample_offline
from pulse_harness import PulseMicrophone

from soundwatch.errors import SoundwatchError
from soundwatch.stream import find_input_device, list_input_devices, open_source
from soundwatch.stream.base import AudioBlock
from soundwatch.stream.devices import PortAudioStreams, import_sounddevice
from soundwatch.stream.microphone import MicrophoneSource

FEED_RATE = 16000


@pytest.fixture(scope="module")
def pulse():
    with PulseMicrophone(rate=FEED_RATE) as harness:
        yield harness


def _record_until(
    source: MicrophoneSource, done: Callable[[list[AudioBlock]], bool], limit: float = 30.0
) -> list[AudioBlock]:
    """Read blocks until ``done(blocks)``; fail after ``limit`` seconds."""
    blocks: list[AudioBlock] = []
    deadline = time.monotonic() + limit
    while not done(blocks):
        assert time.monotonic() < deadline, "the condition was not reached in time"
        block = source.read(0.05)
        if block is not None:
            blocks.append(block)
    return blocks


def _audio(blocks: list[AudioBlock]) -> bool:
    """The stream delivers audio."""
    return bool(blocks)


def _live(source: MicrophoneSource, stretch: float = 0.5) -> Callable[[list[AudioBlock]], bool]:
    """The device delivers audio at real-time pace and none is being skipped.

    The harness's feeder blocks while nobody records (its FIFO is full) and, once a stream
    opens, writes the audio it owes at once: more audio than real time, which the source
    skips as a clock resync until the real clock has caught up. What is played before that is
    over would be skipped with it; what is played once over ``stretch`` s of wall time the
    device delivered at most 1.25 times that much audio and skipped none is recorded.
    """
    history: list[tuple[float, int, int]] = []

    def done(blocks: list[AudioBlock]) -> bool:
        now, stats = time.monotonic(), source.stats()
        history.append((now, stats.samples_in, stats.clock_skipped_samples))
        older = [h for h in history if now - h[0] >= stretch]
        if not blocks or not older:
            return False
        then, samples_in, skipped = older[-1]
        delivered = stats.samples_in - samples_in
        paced = delivered <= 1.25 * (now - then) * source.native_rate
        return paced and stats.clock_skipped_samples == skipped

    return done


def _captured_until(t: float) -> Callable[[list[AudioBlock]], bool]:
    """The blocks reach capture time ``t`` (Unix seconds)."""
    return lambda blocks: bool(blocks) and blocks[-1].t_end >= t


def _play(pulse: PulseMicrophone, *parts: np.ndarray) -> float:
    """Play ``parts`` through the virtual microphone; the Unix time all was written."""
    for part in parts:
        pulse.feed(part)
    pulse.wait_fed()
    return time.time()


def _chirp(seconds: float, f0: float, f1: float) -> np.ndarray:
    t = np.arange(int(seconds * FEED_RATE)) / FEED_RATE
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
    return 0.5 * np.sin(phase)


def _time_info(adc: float, current: float = 0.0) -> SimpleNamespace:
    """PortAudio-shaped callback times (Unix seconds here: the unopened source's offset is 0;
    0.0 means PortAudio reports none)."""
    return SimpleNamespace(inputBufferAdcTime=adc, currentTime=current)


def _best_alignment(recorded: np.ndarray, reference: np.ndarray) -> tuple[int, float]:
    """Lag of ``reference`` inside ``recorded`` and the Pearson correlation there."""
    n = len(recorded) + len(reference)
    corr = np.fft.irfft(np.fft.rfft(recorded, n) * np.conj(np.fft.rfft(reference, n)), n)
    lag = int(np.argmax(corr[: len(recorded) - len(reference) + 1]))
    segment = recorded[lag : lag + len(reference)]
    return lag, float(np.corrcoef(segment, reference)[0, 1])


def test_records_what_the_virtual_microphone_plays(pulse):
    chirp = _chirp(1.0, 200.0, 4000.0)
    tone = 0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(FEED_RATE) / FEED_RATE)
    source = open_source("mic", f"mic:{pulse.device}?channels=2&rate=48000")
    assert isinstance(source, MicrophoneSource)
    assert source.describe()["device"] == "pulse" and source.native_rate == 48000
    source.start()
    try:
        _record_until(source, _live(source))  # the stream runs: what is played is recorded
        played = _play(pulse, np.zeros(FEED_RATE // 4), chirp, tone)
        blocks = _record_until(source, _captured_until(played + 0.5))
        stats = source.stats()
    finally:
        source.stop()
    source.stop()  # idempotent
    recorded = np.concatenate([b.samples for b in blocks])
    reference = resample_offline(chirp.astype(np.float32), FEED_RATE)
    lag, correlation = _best_alignment(recorded, reference)
    print(f"chirp correlation {correlation:.4f} at lag {lag}")
    assert correlation > 0.9, f"recording does not match the fed chirp (r={correlation:.3f})"
    tone_part = recorded[lag + len(reference) + 3200 : lag + len(reference) + 3200 + 16000]
    assert len(tone_part) == 16000
    peak_hz = np.argmax(np.abs(np.fft.rfft(tone_part))) * 32000 / len(tone_part)
    assert abs(peak_hz - 1000.0) <= 4
    assert stats.overflows == 0 and stats.overruns == 0 and stats.dropped_samples == 0
    assert stats.gaps == 0 and stats.restarts == 0
    assert stats.samples_in >= 2.25 * 48000
    for a, b in itertools.pairwise(blocks):
        assert b.t_start == pytest.approx(a.t_end, abs=1e-5)  # contiguous and monotonic
        assert b.t_ingest >= a.t_ingest
    assert abs(blocks[-1].t_end - time.time()) < 5.0  # stamped with the capture (Unix) clock
    assert all(b.samples.dtype == np.float32 and b.samples.flags.c_contiguous for b in blocks)


def test_device_loss_is_survived_with_a_counted_restart(pulse, caplog):
    source = open_source("mic", f"mic:{pulse.device}")
    source.start()
    try:
        blocks = _record_until(source, _live(source))
        killed = len(blocks)
        with caplog.at_level("WARNING", logger="soundwatch.stream.microphone"):
            pulse.kill_daemon()
            blocks += _record_until(source, lambda _: "lost" in caplog.text)
            pulse.restart_daemon()
            blocks += _record_until(source, lambda _: source.stats().restarts >= 1)
            blocks += _record_until(source, _live(source))
            tone = 0.5 * np.sin(2 * np.pi * 1500.0 * np.arange(FEED_RATE) / FEED_RATE)
            played = _play(pulse, tone)
            after = _record_until(source, _captured_until(played + 0.5))
        stats = source.stats()
    finally:
        source.stop()
    assert "'pulse'" in caplog.text and "lost" in caplog.text
    assert stats.gaps >= 1
    # the reopened device's audio starts a new segment, later than all before it (segments
    # that only skipped audio beyond real time run on in time); times never go backwards
    timeline = blocks[killed - 1 :] + after
    pairs = list(itertools.pairwise(timeline))
    assert any(b.new_segment and b.t_start > a.t_end for a, b in pairs)
    assert all(b.t_start >= a.t_end - 1e-5 for a, b in pairs)
    recorded = np.concatenate([b.samples for b in after])
    spectrum = np.abs(np.fft.rfft(recorded))
    assert abs(np.argmax(spectrum) * 32000 / len(recorded) - 1500.0) <= 4


def test_a_device_that_vanishes_and_comes_back_is_found_again(pulse, caplog):
    """The sound server dies and PortAudio's device list is scanned again without it (as
    when another stream re-initialises PortAudio, or a USB microphone is unplugged): the
    source keeps looking for the device by name, re-scans once it is back, and records."""
    source = open_source("mic", f"mic:{pulse.device}")
    source.start()
    try:
        _record_until(source, _audio)
        with caplog.at_level("WARNING", logger="soundwatch.stream.microphone"):
            pulse.kill_daemon()
            # once the source has closed its stream PortAudio can re-scan: no "pulse" now
            _record_until(source, lambda _: PortAudioStreams.reinitialize_if_idle())
            assert pulse.device not in [d.name for d in list_input_devices()]
            _record_until(source, lambda _: "no input device matches 'pulse'" in caplog.text)
            assert source.stats().restarts == 0
            pulse.restart_daemon()
            _record_until(source, lambda _: source.stats().restarts >= 1)
            _record_until(source, _live(source))
            tone = 0.5 * np.sin(2 * np.pi * 700.0 * np.arange(FEED_RATE) / FEED_RATE)
            played = _play(pulse, tone)
            after = _record_until(source, _captured_until(played + 0.5))
    finally:
        source.stop()
    assert pulse.device in [d.name for d in list_input_devices()]
    assert "reopened" in caplog.text
    recorded = np.concatenate([b.samples for b in after])
    spectrum = np.abs(np.fft.rfft(recorded))
    assert abs(np.argmax(spectrum) * 32000 / len(recorded) - 700.0) <= 4


def test_stop_returns_when_the_device_hangs(pulse, caplog):
    """A supervisor stuck in a device call (a hung sound server) cannot block stop()."""
    source = MicrophoneSource("mic", pulse.device)
    source.STOP_TIMEOUT_SECONDS = 0.5
    looking = threading.Event()
    release = threading.Event()

    def hung_find_again():
        looking.set()
        release.wait(60)
        raise SoundwatchError("released by the test")

    source._find_again = hung_find_again  # the device scan never returns
    source.start()
    try:
        _record_until(source, _audio)
        source._stream.abort()  # the device stops delivering: the supervisor reopens it ...
        assert looking.wait(30)  # ... and hangs looking for the device
        stopper = threading.Thread(target=source.stop, daemon=True)
        with caplog.at_level("WARNING", logger="soundwatch.stream.microphone"):
            stopper.start()
            stopper.join(30)
        assert not stopper.is_alive(), "stop() waited for the hung supervisor"
        assert "did not stop" in caplog.text and "'mic'" in caplog.text
    finally:
        release.set()


def test_devices_are_listed_and_found_by_index_or_name_part(pulse):
    devices = list_input_devices()
    names = [d.name for d in devices]
    assert "pulse" in names
    pulse_device = next(d for d in devices if d.name == "pulse")
    assert pulse_device.channels >= 1 and pulse_device.default_rate > 0
    assert find_input_device("PULS") == pulse_device
    assert find_input_device(pulse_device.index) == pulse_device
    assert find_input_device(str(pulse_device.index)) == pulse_device
    with pytest.raises(SoundwatchError, match=r"(?s)no input device matches 'no such mic'.*pulse"):
        open_source("mic", "mic:no such mic")
    with pytest.raises(SoundwatchError, match="no input device with index 999"):
        find_input_device(999)
    with pytest.raises(SoundwatchError, match="cannot record 64"):
        MicrophoneSource("mic", "pulse", channels=64)
    # channels=None records one channel, whatever the device offers
    assert pulse_device.channels > 1
    mono = MicrophoneSource("mic", "pulse")
    assert mono.channels == 1 and mono.describe()["channels"] == 1
    # a microphone cannot be slowed down: when inference is behind, windows are dropped
    assert mono.waits_when_behind is False


def test_missing_portaudio_is_explained(monkeypatch):
    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "sounddevice")
    monkeypatch.setattr(builtins, "__import__", failing_import)
    with pytest.raises(SoundwatchError, match="apt-get install libportaudio2"):
        import_sounddevice()
    with pytest.raises(SoundwatchError, match="libportaudio2"):
        list_input_devices()


def test_callback_counts_overflows_and_restamps_after_time_jumps(pulse):
    """Drive the real callback with PortAudio-shaped time info (no stream needed)."""
    source = MicrophoneSource("mic", "pulse", samplerate=48000, blocksize=480)
    ok = SimpleNamespace(input_overflow=False)
    frames = np.zeros((480, 1), dtype=np.float32)
    t0 = time.time() - 1.07  # the simulated timeline below ends about now
    adc = t0
    for _ in range(5):  # regular callbacks, slightly jittered ADC times
        source._callback(frames, 480, _time_info(adc + 0.001), ok)
        adc += 0.01
    # a burst: the sound server hands over buffered audio stamped 0.8 s early; nothing lost
    source._callback(frames, 480, _time_info(adc - 0.8), ok)
    adc += 0.01
    adc += 1.0  # one second of audio never arrived
    source._callback(frames, 480, _time_info(adc), ok)
    adc += 0.01
    overflow = SimpleNamespace(input_overflow=True)
    source._callback(frames, 480, _time_info(adc + 0.003), overflow)
    # no ADC time: time.time() is used and agrees with the frame counter, so no new gap
    source._callback(frames, 480, _time_info(0.0), ok)
    stats = source.stats()
    assert (stats.overflows, stats.gaps, stats.samples_in) == (1, 2, 9 * 480)
    starts = []
    breaks = []
    while (block := source.read(0)) is not None:
        starts.append((block.t_start, block.t_end))
        breaks.append(block.new_segment)
    # The pipeline restarts a stream's windows exactly where audio was lost.
    assert sum(breaks) == stats.gaps and not breaks[0]
    assert starts[0][0] == pytest.approx(t0 + 0.001, abs=1e-9)  # first callback anchors
    assert any(s == pytest.approx(t0 + 1.060, abs=1e-6) for s, _ in starts)  # after the jump
    assert any(s == pytest.approx(t0 + 1.073, abs=1e-6) for s, _ in starts)  # after overflow


def test_capture_times_follow_the_real_clock_across_a_burst_and_a_reopen(pulse):
    """A backlog handed over at once (5 s written straight into the pipe source's FIFO, on
    top of the feeder's real-time audio) and a reopened device: no block is stamped later
    than the real clock by more than the tolerance and a block, times never go backwards,
    the audio beyond real time is skipped and counted, and each new segment is counted."""
    source = MicrophoneSource("mic", pulse.device, samplerate=48000)
    reads: list[tuple[float, AudioBlock]] = []  # (Unix time just after the read, block)

    def record(done: Callable[[list[AudioBlock]], bool]) -> None:
        blocks: list[AudioBlock] = []
        deadline = time.monotonic() + 30.0
        while not done(blocks):
            assert time.monotonic() < deadline, "the condition was not reached in time"
            block = source.read(0.05)
            if block is not None:
                blocks.append(block)
                reads.append((time.time(), block))

    burst_seconds = 5.0
    burst = 0.3 * np.sin(2 * np.pi * 440.0 * np.arange(int(burst_seconds * FEED_RATE)) / FEED_RATE)
    source.start()
    try:
        record(_live(source))
        fifo = os.open(pulse.fifo, os.O_WRONLY)  # the daemon reads it while the stream records
        try:
            os.write(fifo, (burst * 32767).astype("<i2").tobytes())
        finally:
            os.close(fifo)
        record(lambda _: source.stats().clock_resyncs >= 1)
        record(_live(source))
        before_loss = len(reads)
        pulse.restart_daemon()  # the device is lost and comes back: a new PortAudio stream
        record(lambda _: source.stats().restarts >= 1)
        record(_live(source))
        stats = source.stats()
    finally:
        source.stop()
    bound = source.GAP_TOLERANCE_SECONDS + source.blocksize / source.native_rate + 0.005
    for wall, block in reads:  # a block cannot be captured after it was read
        assert block.t_end <= wall + bound, f"stamped {block.t_end - wall:+.3f} s ahead"
    for (_, a), (_, b) in itertools.pairwise(reads):
        assert b.t_start >= a.t_end - 1e-5, "capture times went backwards"
        if not b.new_segment:
            assert b.t_start == pytest.approx(a.t_end, abs=1e-5)
    # the live audio after the reopen is anchored afresh (reading lags it a little under load)
    assert reads[-1][1].t_end > reads[-1][0] - 3.0
    assert any(b.new_segment for _, b in reads[before_loss:])
    assert stats.clock_resyncs >= 1 and stats.restarts == 1 and stats.gaps >= 1
    assert stats.clock_skipped_samples >= 1.0 * source.native_rate  # most of the 5 s burst
    breaks = sum(b.new_segment for _, b in reads)
    assert 2 <= breaks <= stats.gaps + stats.clock_resyncs


def test_callback_skips_audio_beyond_the_real_clock(pulse):
    """Drive the real callback: 2 s of audio delivered at once (ADC times of now) cannot all
    have been captured by now; what would end later than the clock plus the tolerance is
    skipped until the clock catches up, then the time runs on in a new segment (no gap). A
    re-anchor after an overflow never goes back before what was stamped."""
    source = MicrophoneSource("mic", "pulse", samplerate=48000, blocksize=480)
    ok = SimpleNamespace(input_overflow=False)
    frames = np.zeros((480, 1), dtype=np.float32)
    start = time.time()
    for _ in range(200):  # 2 s of audio, delivered in a moment
        source._callback(frames, 480, _time_info(time.time(), time.time()), ok)
    stats = source.stats()
    assert stats.clock_resyncs == 1 and stats.gaps == 0 and stats.samples_in == 200 * 480
    produced = stats.samples_in - stats.clock_skipped_samples
    assert 0 < produced / 48000 <= source.GAP_TOLERANCE_SECONDS + 0.01 + (time.time() - start)
    while True:  # skipped until the clock has caught up with the next block's end
        assert time.time() < start + 10.0, "the skip did not end"
        skipped = source.stats().clock_skipped_samples
        source._callback(frames, 480, _time_info(time.time(), time.time()), ok)
        if source.stats().clock_skipped_samples == skipped:
            break
    assert time.time() >= start + (produced + 480) / 48000
    overflow = SimpleNamespace(input_overflow=True)  # stamped early: anchored at the last end
    source._callback(frames, 480, _time_info(start - 5.0, time.time()), overflow)
    stats = source.stats()
    assert stats.clock_resyncs == 1 and stats.gaps == 1 and stats.overflows == 1
    blocks = []
    while (block := source.read(0)) is not None:
        blocks.append(block)
    assert blocks[-1].t_end <= time.time() + source.GAP_TOLERANCE_SECONDS + 0.01
    for a, b in itertools.pairwise(blocks):
        assert b.t_start == pytest.approx(a.t_end, abs=1e-5)  # time runs on, never back
    assert sum(b.new_segment for b in blocks) == stats.gaps + stats.clock_resyncs == 2

"""Raw PCM source: from a pipe in-process and from stdin of a real subprocess."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from conftest import resample_offline

from soundwatch.errors import SoundwatchError
from soundwatch.stream import PcmFormat, PcmSource, open_source


def _drain(source, limit: float = 30.0):
    blocks = []
    deadline = time.monotonic() + limit
    while not source.ended:
        assert time.monotonic() < deadline, "pcm source did not end"
        block = source.read(0.05)
        if block is not None:
            blocks.append(block)
    return blocks


@contextlib.contextmanager
def _piped(data: bytes, chunk: int) -> Iterator[int]:
    """A pipe whose write end a thread fills with ``data`` in ``chunk``-byte writes.

    Yields the read end; on exit closes it (a writer still blocked then gets EPIPE) and
    checks that the writer finished. Stop the source reading it before leaving the block.
    """
    read_fd, write_fd = os.pipe()

    def write() -> None:
        try:
            with os.fdopen(write_fd, "wb") as out:
                for start in range(0, len(data), chunk):
                    out.write(data[start : start + chunk])
                    out.flush()
        except BrokenPipeError:
            pass  # the reader went away first (the test already failed)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    try:
        yield read_fd
    finally:
        os.close(read_fd)
        thread.join(timeout=30)
        assert not thread.is_alive(), "the pipe writer did not finish"


@pytest.mark.parametrize(
    ("fmt", "channels", "rate"),
    [("s16le", 1, 16000), ("s16le", 2, 48000), ("f32le", 1, 8000), ("s32le", 1, 44100)],
)
def test_pipe_pcm_is_decoded_downmixed_and_resampled(fmt, channels, rate):
    rng = np.random.default_rng(3)
    frames = (rng.uniform(-0.5, 0.5, (rate // 2, channels))).astype(np.float32)
    if fmt == "s16le":
        raw = np.round(frames * 32767).astype("<i2")
        exact = raw.astype(np.float32) / 32768
    elif fmt == "s32le":
        raw = np.round(frames * 2**31 * 0.999).astype("<i4")
        exact = (raw.astype(np.float32) * np.float32(1 / 2**31)).astype(np.float32)
    else:
        raw = frames.astype("<f4")
        exact = frames
    with _piped(raw.tobytes(), chunk=777) as fd:  # chunks split frames on purpose
        source = PcmSource("p", PcmFormat(rate=rate, channels=channels, format=fmt), stream=fd)
        source.start()
        try:
            blocks = _drain(source)
        finally:
            source.stop()
    got = np.concatenate([b.samples for b in blocks])
    expected = resample_offline(exact.mean(axis=1, dtype=np.float32), rate)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    stats = source.stats()
    assert stats.samples_in == rate // 2 and stats.dropped_samples == 0 and stats.gaps == 0
    for a, b in itertools.pairwise(blocks):
        assert b.t_start == pytest.approx(a.t_end, abs=1e-6)


def test_fast_producer_gets_back_pressure_and_nothing_is_dropped():
    rate = 16000
    seconds = 6  # more than the 1 s ring: the writer must wait for the reader
    data = (np.arange(rate * seconds) % 1000 - 500).astype("<i2")
    with _piped(data.tobytes(), chunk=65536) as fd:
        source = PcmSource("p", PcmFormat(rate=rate), stream=fd, ring_seconds=1.0)
        source.start()
        try:
            total = sum(len(b.samples) for b in _drain(source, limit=60))
        finally:
            source.stop()
    stats = source.stats()
    assert stats.samples_in == rate * seconds
    assert stats.overruns == 0 and stats.dropped_samples == 0
    assert total == 2 * rate * seconds


def test_a_ring_smaller_than_one_read_still_passes_everything():
    """The reader stores what fits and waits for the rest, however small the ring."""
    rate = 16000
    data = (np.arange(rate) % 2000 - 1000).astype("<i2")
    with _piped(data.tobytes(), chunk=4096) as fd:
        # 80 frames of ring; the reader takes up to 20 ms (320 frames) per read
        source = PcmSource("p", PcmFormat(rate=rate), stream=fd, ring_seconds=0.005)
        source.start()
        try:
            blocks = _drain(source)
        finally:
            source.stop()
    got = np.concatenate([b.samples for b in blocks])
    np.testing.assert_allclose(
        got, resample_offline(data.astype(np.float32) / 32768, rate), atol=1e-5
    )
    assert source.stats().dropped_samples == 0 and source.stats().overruns == 0


def test_trailing_partial_frame_is_reported(caplog):
    with _piped(b"\x01\x00\x02\x00\x03", chunk=5) as fd, caplog.at_level("WARNING"):
        source = PcmSource("p", PcmFormat(rate=32000), stream=fd)
        source.start()
        try:
            blocks = _drain(source)
        finally:
            source.stop()
    assert sum(len(b.samples) for b in blocks) == 2
    assert "do not form a whole frame" in caplog.text


def test_stdin_of_a_subprocess_end_to_end():
    rate = 16000
    t = np.arange(rate) / rate
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t) * 32767).astype("<i2")
    script = (
        "import json, numpy as np\n"
        "from soundwatch.stream import open_source\n"
        "src = open_source('pcm', 'pcm:-?rate=16000&channels=1&format=s16le')\n"
        "src.start()\n"
        "blocks = []\n"
        "while not src.ended:\n"
        "    b = src.read(0.1)\n"
        "    if b is not None:\n"
        "        blocks.append(b.samples)\n"
        "x = np.concatenate(blocks)\n"
        "peak = float(np.argmax(np.abs(np.fft.rfft(x[:32000]))) * 32000 / 32000)\n"
        "print(json.dumps({'n': len(x), 'peak_hz': peak, 'in': src.stats().samples_in}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=tone.tobytes(),
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(result.stdout)
    assert report == {"n": 32000, "peak_hz": 1000.0, "in": rate}


def test_bad_pcm_options_are_clear_errors():
    with pytest.raises(SoundwatchError, match="unknown PCM format 'mp3'"):
        open_source("p", "pcm:-?format=mp3")
    with pytest.raises(SoundwatchError, match="must be an integer"):
        open_source("p", "pcm:-?rate=fast")
    with pytest.raises(SoundwatchError, match="positive"):
        PcmFormat(rate=0)
    with pytest.raises(SoundwatchError, match="cannot open PCM input"):
        open_source("p", "pcm:/nonexistent/fifo").start()


def test_stdin_that_stops_mid_sample_keeps_every_whole_frame():
    """A producer killed mid-write: stereo s16le ending 3 bytes into a frame (one whole
    sample and half of the next). Every whole frame is kept, the rest reported, no hang."""
    rate = 16000
    frames = (np.arange(2 * rate * 2) % 3000 - 1500).astype("<i2").reshape(-1, 2)
    data = frames.tobytes() + b"\x10\x00\x20"
    script = (
        "import json, logging, numpy as np\n"
        "from soundwatch.stream import open_source\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "src = open_source('pcm', 'pcm:-?rate=16000&channels=2')\n"
        "src.start()\n"
        "blocks = []\n"
        "while not src.ended:\n"
        "    b = src.read(0.1)\n"
        "    if b is not None:\n"
        "        blocks.append(b.samples)\n"
        "src.stop()\n"
        "x = np.concatenate(blocks)\n"
        "np.save(__import__('sys').argv[1], x)\n"
        "stats = src.stats()\n"
        "print(json.dumps({'in': stats.samples_in, 'dropped': stats.dropped_samples}))\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "x.npy")
        result = subprocess.run(
            [sys.executable, "-c", script, out], input=data, capture_output=True, timeout=120
        )
        assert result.returncode == 0, result.stderr.decode()
        got = np.load(out)
    assert json.loads(result.stdout) == {"in": len(frames), "dropped": 0}
    stderr = result.stderr.decode()
    assert "ended with 3 byte(s) that do not form a whole frame (4 bytes per frame)" in stderr
    mono = frames.astype(np.float32).mean(axis=1) / 32768
    np.testing.assert_allclose(got, resample_offline(mono, rate), atol=1e-5, rtol=0)

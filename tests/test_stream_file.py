"""File source: fast/realtime/loop/ended, equality with read_audio_file, decode errors."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torchaudio

from soundwatch.errors import SoundwatchError
from soundwatch.stream import FileSource, open_source, pacing, read_audio_file
from soundwatch.stream.base import AudioBlock


def _write(path: Path, rate: int, seconds: float, channels: int = 1, **kwargs) -> np.ndarray:
    n = int(rate * seconds)
    rng = np.random.default_rng(rate + channels)
    t = np.arange(n) / rate
    data = np.stack(
        [
            0.3 * np.sin(2 * np.pi * (300 + 200 * c) * t) + 0.05 * rng.standard_normal(n)
            for c in range(channels)
        ],
        axis=1,
    ).astype(np.float32)
    soundfile.write(path, data, rate, **kwargs)
    return data


def _drain(source, timeout: float = 0.05, limit: float = 30.0) -> list[AudioBlock]:
    blocks = []
    deadline = time.monotonic() + limit
    while not source.ended:
        assert time.monotonic() < deadline, "source did not end"
        block = source.read(timeout)
        if block is not None:
            blocks.append(block)
    return blocks


def _torchaudio_reference(path: Path) -> np.ndarray:
    data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    mono = torch.from_numpy(data.mean(axis=1, dtype=np.float32))
    if rate == 32000:
        return mono.numpy()
    return torchaudio.functional.resample(mono, rate, 32000).numpy()


@pytest.mark.parametrize(
    ("name", "rate", "channels", "subtype"),
    [
        ("stereo.wav", 44100, 2, "PCM_16"),
        ("mono.flac", 48000, 1, "PCM_24"),
        ("voice.ogg", 22050, 1, "VORBIS"),
        ("native.wav", 32000, 1, "FLOAT"),
    ],
)
def test_fast_mode_equals_read_audio_file_and_torchaudio(tmp_path, name, rate, channels, subtype):
    path = tmp_path / name
    _write(path, rate, 1.3, channels, subtype=subtype)
    samples, original_rate = read_audio_file(path)
    assert original_rate == rate and samples.dtype == np.float32
    np.testing.assert_allclose(samples, _torchaudio_reference(path), atol=1e-5, rtol=0)

    source = FileSource(Path(name).stem, path, pace="fast", block_frames=4096)
    assert source.describe()["native_rate"] == rate
    source.start()
    blocks = _drain(source)
    source.stop()
    # Different decode block size, same result within float rounding ...
    np.testing.assert_allclose(np.concatenate([b.samples for b in blocks]), samples, atol=1e-5)
    # ... and with the default block size, the exact same samples as read_audio_file.
    default = open_source("x", f"file:{path}", pace="fast")
    default.start()
    exact = np.concatenate([b.samples for b in _drain(default)])
    np.testing.assert_array_equal(exact, samples)
    assert default.read(0.01) is None and default.ended
    assert default.stats().samples_in == int(rate * 1.3)


def test_fast_mode_timestamps_follow_the_sample_offset(tmp_path):
    path = tmp_path / "a.wav"
    _write(path, 16000, 3.0)
    before = time.time()
    source = FileSource("a", path, pace="fast", block_frames=8000)
    source.start()
    blocks = _drain(source)
    assert before <= blocks[0].t_start <= time.time()
    for a, b in itertools.pairwise(blocks):
        assert b.t_start == pytest.approx(a.t_end, abs=1e-6)
        assert b.t_ingest >= a.t_ingest
    assert blocks[-1].t_end - blocks[0].t_start == pytest.approx(3.0, abs=1e-4)
    assert all(b.samples.flags.c_contiguous and b.samples.ndim == 1 for b in blocks)


def test_realtime_pace_never_runs_ahead_of_the_wall_clock(tmp_path):
    path = tmp_path / "b.wav"
    _write(path, 44100, 0.6)
    source = FileSource("b", path, pace="realtime")
    source.start()
    started = time.monotonic()
    blocks = []
    released = 0
    while not source.ended:
        block = source.read(0.05)
        if block is None:
            continue
        released += len(block.samples)
        elapsed = time.monotonic() - started
        assert released <= (elapsed + 0.02) * 32000  # never ahead of real time
        assert block.t_ingest <= time.monotonic()
        blocks.append(block)
    assert time.monotonic() - started >= 0.55
    np.testing.assert_array_equal(
        np.concatenate([b.samples for b in blocks]), read_audio_file(path)[0]
    )
    assert source.read(0.01) is None


def test_realtime_read_with_zero_timeout_never_waits_and_releases_only_what_is_due(
    tmp_path, monkeypatch
):
    path = tmp_path / "c.wav"
    _write(path, 32000, 2.0)
    source = FileSource("c", path, pace="realtime")
    source.start()
    first = source.read(1.0)
    assert first is not None
    assert len(first.samples) < 0.5 * 32000

    def no_sleep(seconds: float) -> None:
        raise AssertionError(f"read(0.0) waited {seconds} s")

    monkeypatch.setattr(pacing.time, "sleep", no_sleep)
    released = len(first.samples)
    while (block := source.read(0.0)) is not None:  # drain what is due; then None at once
        released += len(block.samples)
        due = (time.monotonic() - source._pacer.t_mono) * 32000
        assert released <= due  # never ahead of the wall clock
    assert not source.ended and released < 2.0 * 32000


def test_loop_wraps_seamlessly_and_keeps_time_increasing(tmp_path):
    path = tmp_path / "loop.wav"
    _write(path, 48000, 0.25)
    data, _ = soundfile.read(path, dtype="float32", always_2d=True)  # as stored (16-bit)
    source = FileSource("loop", path, pace="fast", loop=True, block_frames=5000)
    source.start()
    blocks = []
    while sum(len(b.samples) for b in blocks) < 32000 * 1.0:
        block = source.read(0.01)
        assert block is not None
        blocks.append(block)
    assert not source.ended
    source.stop()
    got = np.concatenate([b.samples for b in blocks])
    tiled = torch.from_numpy(np.tile(data[:, 0], 6))
    expected = torchaudio.functional.resample(tiled, 48000, 32000).numpy()
    n = 32000  # well before the end of the tiled reference (its tail is zero-padded)
    np.testing.assert_allclose(got[:n], expected[:n], atol=1e-5, rtol=0)
    for a, b in itertools.pairwise(blocks):
        assert b.t_start == pytest.approx(a.t_end, abs=1e-6)


def test_corrupt_and_missing_files_raise_clear_errors(tmp_path):
    corrupt = tmp_path / "broken.wav"
    corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage that is not audio" * 3)
    with pytest.raises(SoundwatchError, match=r"broken\.wav.*corrupt or not a supported"):
        read_audio_file(corrupt)
    with pytest.raises(SoundwatchError, match=r"broken\.wav.*corrupt"):
        open_source("x", f"file:{corrupt}")
    text = tmp_path / "notes.flac"
    text.write_text("just text")
    with pytest.raises(SoundwatchError, match=r"notes\.flac"):
        read_audio_file(text)
    with pytest.raises(SoundwatchError, match="not found"):
        read_audio_file(tmp_path / "missing.wav")
    with pytest.raises(SoundwatchError, match="directory"):
        read_audio_file(tmp_path)


def test_empty_file_ends_immediately_and_cannot_loop(tmp_path):
    path = tmp_path / "empty.wav"
    soundfile.write(path, np.zeros((0, 1), dtype=np.float32), 16000)
    samples, rate = read_audio_file(path)
    assert len(samples) == 0 and rate == 16000
    source = FileSource("e", path, pace="fast")
    source.start()
    assert source.read(0.01) is None and source.ended
    with pytest.raises(SoundwatchError, match="no audio"):
        FileSource("e", path, loop=True)


def test_shared_clip_44k_24bit(shared):
    path = shared("audio/clips/metro_station-paris.wav")
    samples, rate = read_audio_file(path)
    assert rate == 44100
    np.testing.assert_allclose(samples, _torchaudio_reference(path), atol=1e-5, rtol=0)

"""soundwatch record: the last seconds of a live stream cut from the run's audio ring and
written by the client. The ring's rules (exact samples, never across a loss, clear refusals)
on synthetic blocks; then a real ``soundwatch run --control`` on a file paced in real time,
whose recorded 2 s match the file at the place the run says they come from."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import resample_offline

from soundwatch.control.client import ControlRejected, request
from soundwatch.errors import SoundwatchError
from soundwatch.recorder.examples import LiveAudio
from soundwatch.stream import AudioBlock

REPO = Path(__file__).resolve().parent.parent
RATE = 32000


def block(start: int, n: int, t0: float = 1000.0, new_segment: bool = False) -> AudioBlock:
    samples = (np.arange(start, start + n) % 10007).astype(np.float32)
    return AudioBlock(samples, t0 + start / RATE, 0.0, new_segment)


def test_the_last_seconds_are_exact_bounded_and_never_span_a_loss() -> None:
    audio = LiveAudio(seconds=2.0)
    with pytest.raises(SoundwatchError, match=r"holds only 0\.0 s of audio"):
        audio.last("a", 1.0)
    for start in range(0, 3 * RATE, 1000):  # 3 s in 1000-sample blocks: the ring keeps 2
        audio.on_audio("a", block(start, 1000))
    cut = audio.last("a", 1.5)
    end = 3 * RATE
    np.testing.assert_array_equal(cut.samples, block(end - 48000, 48000).samples)
    assert cut.t_start == pytest.approx(1000.0 + (end - 48000) / RATE)
    with pytest.raises(SoundwatchError, match=r"at most 2 s can be recorded"):
        audio.last("a", 2.5)
    audio.on_audio("a", block(end + RATE, 8000, new_segment=True))  # 1 s of audio lost
    with pytest.raises(SoundwatchError, match=r"holds only 0.2 s .* wait 0.8 s more"):
        audio.last("a", 1.0)
    np.testing.assert_array_equal(audio.last("a", 0.25).samples, block(end + RATE, 8000).samples)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "soundwatch.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_record_from_a_running_soundwatch(shared, tmp_path: Path) -> None:
    """2 s recorded from a real run (44.1 kHz file, resampled by the run) equal the file
    resampled offline at the run's reported time; an unknown stream is refused with the
    streams there are; more than the ring holds is refused."""
    from soundwatch.client import Subscriber

    weights = shared("models/mn04_as_mAP_432.pt")
    metro, rate = sf.read(shared("audio/clips/metro_station-paris.wav"), dtype="float32")
    source = np.tile(metro, 3)  # 30 s: time enough to ask while it plays in real time
    wav = tmp_path / "metro30.wav"
    sf.write(wav, source, rate, subtype="FLOAT")
    pub, control = f"ipc://{tmp_path / 'pub'}", f"ipc://{tmp_path / 'ctl'}"
    run = subprocess.Popen(
        [
            *(sys.executable, "-m", "soundwatch.cli", "run", "--source", f"m=file:{wav}"),
            *("--weights", str(weights), "--publish", pub, "--control", control),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with Subscriber(pub, topics=["status.m"]) as subscriber:
            deadline = time.monotonic() + 120
            status = None
            while time.monotonic() < deadline:
                assert run.poll() is None, run.stderr.read().decode()
                status = subscriber.receive(timeout=1.0)
                if status is not None and status.counters.get("windows_tagged", 0) > 0:
                    break
            else:
                raise AssertionError("the run never tagged a window")
        out = tmp_path / "example.wav"
        done = cli("record", "--endpoint", control, "--stream", "m", "--seconds", "2", str(out))
        assert done.returncode == 0, done.stderr
        refused = cli(
            "record",
            "--endpoint",
            control,
            "--stream",
            "nope",
            "--seconds",
            "2",
            str(tmp_path / "x.wav"),
        )
        with pytest.raises(ControlRejected, match=r"at most 30 s can be recorded"):
            request(control, "record", stream="m", seconds=31)
        assert run.poll() is None, "the file ended before the checks: the run was too slow"
    finally:
        run.terminate()
        run.wait(timeout=60)
    assert refused.returncode == 1 and not (tmp_path / "x.wav").exists()
    assert "no stream 'nope'; the streams are: m" in refused.stderr
    written = json.loads(done.stdout)
    recorded, recorded_rate = sf.read(out, dtype="float32")
    assert recorded_rate == RATE and len(recorded) == 2 * RATE and written["seconds"] == 2.0
    offset = round((written["t_start"] - status.t_start) * RATE)  # status: the first sample
    reference = resample_offline(source, rate)
    assert offset >= 0 and offset + 2 * RATE <= len(reference)
    np.testing.assert_allclose(recorded, reference[offset : offset + 2 * RATE], atol=1e-3)
    shifted = reference[offset + 5 : offset + 5 + 2 * RATE]  # the place matters
    assert np.abs(recorded - shifted).max() > 1e-2

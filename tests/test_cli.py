"""The ``soundwatch`` command as a user runs it: real subprocesses, real exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import soundwatch

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "soundwatch.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert soundwatch.__version__ in result.stdout


def test_config_check_accepts_shipped_config() -> None:
    result = run_cli("config", "check", str(REPO / "config.yaml"))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_config_check_rejects_bad_key_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: mn04\n  treads: 2\n")
    result = run_cli("config", "check", str(bad))
    assert result.returncode == 1
    assert "model.treads" in result.stderr
    assert "unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_devices_lists_the_sound_servers_microphone() -> None:
    """``soundwatch devices`` with a (private) PulseAudio server: its device is listed with
    index, channels and rate. (Missing PortAudio: tests/test_stream_microphone.py.)"""
    from pulse_harness import PulseMicrophone

    with PulseMicrophone() as pulse:
        result = subprocess.run(
            [sys.executable, "-m", "soundwatch.cli", "devices"],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=pulse.env,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["index", "channels", "rate", "name"]
    pulse_rows = [row.split() for row in rows if row.split()[3:4] == [pulse.device]]
    assert len(pulse_rows) == 1, result.stdout
    _index, channels, rate = (int(v) for v in pulse_rows[0][:3])  # all three are numbers
    assert channels >= 1 and rate >= 8000


def test_file_names_become_valid_stream_ids_and_bad_ids_are_explained() -> None:
    from soundwatch.errors import SoundwatchError
    from soundwatch.stream import parse_source_arg

    assert parse_source_arg("file:/tmp/my clip.v2.wav") == (
        "my_clip_v2",
        "file:/tmp/my clip.v2.wav",
    )
    with pytest.raises(SoundwatchError, match="letters, digits, _ and -"):
        parse_source_arg("a.b=synthetic")


@pytest.mark.parametrize(("flags", "stagger"), [([], True), (["--no-stagger"], False)])
def test_run_stagger_flag(flags: list[str], stagger: bool) -> None:
    from soundwatch.cli import run, run_config

    context = run.make_context("run", ["--source", "synthetic", *flags])
    assert run_config(context.params).pipeline.stagger is stagger


def test_run_accepts_auto_source_from_the_command_line() -> None:
    from soundwatch.runner import sources_from_args

    assert sources_from_args(("auto", "kitchen=auto")) == [
        {"id": None, "spec": "auto"},
        {"id": "kitchen", "spec": "auto"},
    ]


def test_pcm_piped_faster_than_inference_is_tagged_whole(shared, tmp_path: Path) -> None:
    """``ffmpeg ... | soundwatch run --source pcm:-``: 240 s of PCM arrive at once, far
    faster than inference; the pipe waits, so every window is tagged and none dropped."""
    import json

    import numpy as np
    import soundfile

    weights = shared("models/mn04_as_mAP_432.pt")
    speech, rate = soundfile.read(shared("audio/clips/speech.wav"), dtype="float32")
    assert rate == 32000
    pcm = np.tile(np.round(speech[::2] * 32767).astype("<i2"), 24)  # 240 s at 16 kHz
    seconds = len(pcm) / 16000
    result = subprocess.run(
        [
            *(sys.executable, "-m", "soundwatch.cli", "run", "--source", "pcm:-?rate=16000"),
            *("--jsonl", "-", "--weights", str(weights)),
            *("--publish", f"ipc://{tmp_path / 'p'}"),
        ],
        input=pcm.tobytes(),
        capture_output=True,
        cwd=REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr.decode()
    records = [json.loads(line) for line in result.stdout.splitlines()]
    expected = round((seconds - 3.0) / 0.5) + 1  # 3 s windows every 0.5 s
    tags = [r for r in records if r["kind"] == "tags"]
    assert [r["seq"] for r in tags] == list(range(expected))
    final = [r for r in records if r["kind"] == "status"][-1]
    assert final["counters"]["windows_tagged"] == expected
    assert final["counters"]["windows_dropped"] == 0
    assert final["counters"]["samples_in"] == len(pcm)

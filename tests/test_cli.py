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


def test_devices_lists_or_explains() -> None:
    result = run_cli("devices")
    assert "Traceback" not in result.stderr
    if result.returncode == 0:
        assert "index" in result.stdout or "no audio input devices" in result.stdout
    else:
        assert "libportaudio2" in result.stderr


def test_file_names_become_valid_stream_ids_and_bad_ids_are_explained() -> None:
    from soundwatch.errors import SoundwatchError
    from soundwatch.stream import parse_source_arg

    assert parse_source_arg("file:/tmp/my clip.v2.wav") == (
        "my_clip_v2",
        "file:/tmp/my clip.v2.wav",
    )
    with pytest.raises(SoundwatchError, match="letters, digits, _ and -"):
        parse_source_arg("a.b=synthetic")


def test_run_accepts_auto_source_from_the_command_line() -> None:
    from soundwatch.runner import sources_from_args

    assert sources_from_args(("auto", "kitchen=auto")) == [
        {"id": None, "spec": "auto"},
        {"id": "kitchen", "spec": "auto"},
    ]

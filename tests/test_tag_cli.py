"""``soundwatch tag`` as a user runs it, with the real mn04 checkpoint on real clips."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RAIL = {"Train", "Rail transport", "Railroad car, train wagon", "Subway, metro, underground"}


def tag(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "soundwatch.cli", "tag", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )


def test_tag_clips_json_and_a_missing_file(shared, tmp_path: Path) -> None:
    weights = shared("models/mn04_as_mAP_432.pt")
    clips = {name: shared(f"audio/clips/{name}.wav") for name in ("speech", "typing")}
    metro = shared("audio/clips/metro_station-paris.wav")  # 44.1 kHz, 24-bit
    missing = tmp_path / "nope.wav"
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    result = tag(
        str(missing),
        str(clips["speech"]),
        str(corrupt),
        str(clips["typing"]),
        str(metro),
        *("--weights", str(weights), "--window", "10", "--hop", "10", "--json", "--top", "3"),
    )
    assert result.returncode == 1  # some files failed ...
    assert "Traceback" not in result.stderr
    assert str(missing) in result.stderr and "not found" in result.stderr
    assert str(corrupt) in result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    by_file = {r["file"]: r for r in records}  # ... and the others were still tagged
    assert set(by_file) == {str(clips["speech"]), str(clips["typing"]), str(metro)}
    for record in records:
        assert set(record) == {"file", "t_start", "t_end", "top"}
        assert record["t_start"] == 0.0 and record["t_end"] == 10.0
    assert by_file[str(clips["speech"])]["top"][0][0] == "Speech"
    assert by_file[str(clips["typing"])]["top"][0][0] in {"Typing", "Computer keyboard"}
    assert by_file[str(metro)]["top"][0][0] in RAIL


def test_tag_sliding_windows_and_probs(shared) -> None:
    weights = shared("models/mn04_as_mAP_432.pt")
    speech = shared("audio/clips/speech.wav")
    result = tag(str(speech), "--weights", str(weights), "--json", "--probs")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    # Defaults: 3 s windows every 0.5 s over 10 s -> starts 0, 0.5, ..., 7.0.
    assert [r["t_start"] for r in records] == [i / 2 for i in range(15)]
    assert all(len(r["probs"]) == 527 and len(r["top"]) == 5 for r in records)
    assert sum(r["top"][0][0] == "Speech" for r in records) >= len(records) * 0.8


def test_tag_events_json(shared, tmp_path: Path) -> None:
    """``tag --events --json``: one object per event, in seconds from the file's start."""
    import numpy as np
    import soundfile

    weights = shared("models/mn04_as_mAP_432.pt")
    typing, rate = soundfile.read(shared("audio/clips/typing.wav"), dtype="float32")
    speech, _ = soundfile.read(shared("audio/clips/speech.wav"), dtype="float32")
    path = tmp_path / "desk.wav"
    soundfile.write(path, np.concatenate([typing, np.zeros(3 * rate, np.float32), speech]), rate)
    result = tag(str(path), "--weights", str(weights), "--events", "--json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(set(e) == {"file", "label", "onset", "offset", "peak"} for e in events)
    first = {}
    for event in events:
        first.setdefault(event["label"], event)
    assert abs(first["keyboard_typing"]["onset"] - 0.0) <= 0.5
    assert abs(first["speech"]["onset"] - 13.0) <= 0.5
    assert first["keyboard_typing"]["onset"] < first["speech"]["onset"]


def test_onnx_backend_tags_short_windows_in_tag_and_run(shared, tmp_path: Path) -> None:
    """The ONNX export takes every window the pipeline makes: 32-frame windows (the
    shortest ``windows.window``), a file's final window, and a file shorter than one window
    (one 10-frame window); ``tag`` and ``run`` agree with the torch backend."""
    import os

    import numpy as np
    import soundfile

    weights = shared("models/mn04_as_mAP_432.pt")
    speech, rate = soundfile.read(shared("audio/clips/speech.wav"), dtype="float32")
    long, tiny = tmp_path / "long.wav", tmp_path / "tiny.wav"
    soundfile.write(long, speech[: int(1.05 * rate)], rate)
    soundfile.write(tiny, speech[int(2.0 * rate) : int(2.1 * rate)], rate)
    env = {**os.environ, "SOUNDWATCH_CACHE": str(tmp_path / "cache")}  # a fresh export
    windows = ("--window", "0.32", "--hop", "0.32", "--weights", str(weights))

    def records(*args: str) -> list[dict]:
        result = subprocess.run(
            [sys.executable, "-m", "soundwatch.cli", *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    tagged = {}
    for backend in ("onnx", "torch"):
        paths = (str(long), str(tiny))
        tagged[backend] = records(
            "tag", *paths, *windows, "--backend", backend, "--json", "--probs"
        )
    onnx, torch_ = tagged["onnx"], tagged["torch"]
    assert [(r["file"], r["t_start"], r["t_end"]) for r in onnx] == [
        (str(long), 0.0, 0.32),
        (str(long), 0.32, 0.64),
        (str(long), 0.64, 0.96),
        (str(long), 0.73, 1.05),  # the final window ends at the last frame
        (str(tiny), 0.0, 0.1),  # shorter than one window: one window of all 10 frames
    ]
    assert [(r["t_start"], r["t_end"]) for r in torch_] == [
        (r["t_start"], r["t_end"]) for r in onnx
    ]
    for got, expected in zip(onnx, torch_, strict=True):
        np.testing.assert_allclose(got["probs"], expected["probs"], atol=1e-3, rtol=0)

    # long first: the first stream keeps tag's window grid (pipeline.stagger phases the rest)
    sources = ("--source", f"file:{long}", "--source", f"file:{tiny}", "--pace", "fast")
    published = records(
        "run", *sources, *windows, "--backend", "onnx", "--jsonl", "-",
        *("--publish", f"ipc://{tmp_path / 'pub'}"),
    )  # fmt: skip
    tags = {stream: [r for r in published if r["kind"] == "tags" and r["stream"] == stream]
            for stream in ("tiny", "long")}  # fmt: skip
    assert [round(r["t_end"] - r["t_start"], 6) for r in tags["long"]] == [0.32] * 4
    assert [round(r["t_end"] - r["t_start"], 6) for r in tags["tiny"]] == [0.1]
    np.testing.assert_allclose(tags["tiny"][0]["probs"], onnx[-1]["probs"], atol=1e-4, rtol=0)
    for got, expected in zip(tags["long"], onnx[:4], strict=True):
        np.testing.assert_allclose(got["probs"], expected["probs"], atol=1e-4, rtol=0)

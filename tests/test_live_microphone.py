"""``soundwatch run`` on a real microphone: PortAudio recording a PulseAudio pipe source
fed with espeak-ng speech, tags received by a real SUB socket."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile
from conftest import require_executable

from soundwatch.client import Subscriber
from soundwatch.sinks.messages import Status, Tags

REPO = Path(__file__).resolve().parent.parent
SPEECH_TEXT = (
    "Good morning. This is a test of the sound watch microphone pipeline. "
    "The quick brown fox jumps over the lazy dog, and we keep on talking "
    "so that every window hears a human voice speaking clearly."
)


def espeak_speech(tmp_path: Path, rate: int) -> np.ndarray:
    """Speech from espeak-ng at ``rate`` Hz, float32 mono."""
    espeak = require_executable("espeak-ng")
    sox = require_executable("sox")
    raw = tmp_path / "speech_raw.wav"
    wav = tmp_path / "speech.wav"
    subprocess.run([espeak, "-s", "150", "-w", str(raw), SPEECH_TEXT], check=True)
    subprocess.run([sox, str(raw), "-r", str(rate), "-c", "1", str(wav)], check=True)
    audio, _ = soundfile.read(wav, dtype="float32")
    return audio


def free_endpoint() -> str:
    import zmq

    socket = zmq.Context.instance().socket(zmq.PUB)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    socket.close(linger=0)
    return f"tcp://127.0.0.1:{port}"


def start_run(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "soundwatch.cli", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )


def collect(subscriber: Subscriber, want: int, seconds: float) -> list:
    """Messages until ``want`` tags messages arrived or ``seconds`` passed."""
    messages: list = []
    deadline = time.monotonic() + seconds
    while sum(isinstance(m, Tags) for m in messages) < want and time.monotonic() < deadline:
        message = subscriber.receive(timeout=1)
        if message is not None:
            messages.append(message)
    return messages


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    finally:
        process.kill()
    return process.stderr.read() if process.stderr else ""


def test_microphone_speech_is_tagged_speech(tmp_path: Path, shared) -> None:
    from pulse_harness import PulseMicrophone

    PulseMicrophone.require()
    weights = shared("models/mn04_as_mAP_432.pt")
    speech = espeak_speech(tmp_path, rate=16000)
    endpoint = free_endpoint()
    with PulseMicrophone(rate=16000) as pulse, Subscriber(endpoint, topics=["tags.room"]) as sub:
        process = start_run(
            pulse.env,
            "--source",
            f"room=mic:{pulse.device}",
            "--weights",
            str(weights),
            "--publish",
            endpoint,
            "--wait-for-subscribers",
            "1",
            "--window",
            "2",
            "--hop",
            "0.5",
        )
        try:
            # Silence until the pipeline publishes, then speech for its whole length.
            first = collect(sub, want=1, seconds=90)
            assert first, "the microphone pipeline published nothing"
            for _ in range(2):
                pulse.feed(speech)
            messages = collect(sub, want=int(len(speech) * 2 / 16000 / 0.5), seconds=60)
        finally:
            stderr = stop(process)
        assert process.returncode == 0, stderr
    tags = [m for m in first + messages if isinstance(m, Tags)]
    seqs = [m.seq for m in tags]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "seq not contiguous"
    assert sub.gaps == 0
    speech_top = [m for m in tags if m.top[0][0] == "Speech"]
    # Most windows while espeak talks are Speech on top (the first ones still hold silence).
    assert len(speech_top) >= len(tags) // 2, [m.top[0] for m in tags]


def test_file_synthetic_and_microphone_in_one_process(tmp_path: Path, shared) -> None:
    """Three streams in one run share forward passes; each keeps its own contiguous seq."""
    from pulse_harness import PulseMicrophone

    PulseMicrophone.require()
    weights = shared("models/mn04_as_mAP_432.pt")
    music = shared("audio/clips/music.wav")
    speech = espeak_speech(tmp_path, rate=16000)
    endpoint = free_endpoint()
    with PulseMicrophone(rate=16000) as pulse, Subscriber(endpoint) as sub:
        for _ in range(3):
            pulse.feed(speech)
        process = start_run(
            pulse.env,
            *("--source", f"music=file:{music}", "--loop"),
            *("--source", "demo=synthetic"),
            *("--source", f"room=mic:{pulse.device}"),
            *("--weights", str(weights), "--publish", endpoint, "--wait-for-subscribers", "1"),
            *("--window", "1", "--hop", "0.25"),
        )
        try:
            messages = collect(sub, want=60, seconds=120)
        finally:
            stderr = stop(process)
        while (message := sub.receive(timeout=0.5)) is not None:
            messages.append(message)
    assert process.returncode == 0, stderr
    by_topic: dict[str, list[int]] = {}
    for message in messages:
        by_topic.setdefault(message.topic, []).append(message.seq)
    for stream in ("music", "demo", "room"):
        seqs = by_topic.get(f"tags.{stream}")
        assert seqs and len(seqs) >= 5, f"too few tags for {stream}: {by_topic.keys()}"
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), stream
    statuses = [m for m in messages if isinstance(m, Status)]
    assert {m.stream for m in statuses} == {"music", "demo", "room"}
    assert "multi-stream passes" in stderr
    passes = int(stderr.split("multi-stream passes: ")[1].split()[0])
    assert passes > 0, stderr


def test_run_survives_device_loss(tmp_path: Path, shared) -> None:
    """Kill the sound server under a running pipeline, start it again: the run goes on,
    the loss shows in status (restarts, gaps, resyncs) and tags resume, still with
    contiguous seq."""
    from pulse_harness import PulseMicrophone

    PulseMicrophone.require()
    weights = shared("models/mn04_as_mAP_432.pt")
    speech = espeak_speech(tmp_path, rate=16000)
    endpoint = free_endpoint()
    with PulseMicrophone(rate=16000) as pulse, Subscriber(endpoint) as sub:
        process = start_run(
            pulse.env,
            *("--source", f"room=mic:{pulse.device}", "--weights", str(weights)),
            *("--publish", endpoint, "--wait-for-subscribers", "1"),
            *("--window", "1", "--hop", "0.5"),
        )
        try:
            before = collect(sub, want=4, seconds=90)
            assert before, "no tags before the device loss"
            pulse.kill_daemon()  # the run notices (stream error, or no audio for 3 s) ...
            pulse.restart_daemon()  # ... and reopens the device once it is back
            pulse.feed(speech)
            after: list = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                message = sub.receive(timeout=1)
                if message is None:
                    continue
                after.append(message)
                if isinstance(message, Status) and message.counters["restarts"] >= 1:
                    tags_after = [m for m in after if isinstance(m, Tags)]
                    if len(tags_after) >= 4:
                        break
        finally:
            stderr = stop(process)
    assert process.returncode == 0, stderr
    status = [m for m in after if isinstance(m, Status)][-1]
    assert status.counters["restarts"] >= 1, stderr
    assert status.counters["gaps"] >= 1 and status.counters["resyncs"] >= 1
    tags = [m for m in before + after if isinstance(m, Tags)]
    seqs = [m.seq for m in tags]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert tags[-1].t_start > [m for m in before if isinstance(m, Tags)][-1].t_end

"""The live pipeline end to end with real parts: real checkpoint, real files, real ZeroMQ
sockets on loopback, real subprocesses and signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from soundwatch.client import Subscriber
from soundwatch.config import Config, apply_overrides
from soundwatch.pipeline import Collector, Pipeline
from soundwatch.runner import Tagger, run_live, tag_file
from soundwatch.sinks.messages import Event, Status, Tags
from soundwatch.stream import open_source

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tagger(request: pytest.FixtureRequest) -> Tagger:
    from conftest import shared_file

    weights = shared_file("models/mn04_as_mAP_432.pt")
    config = apply_overrides(Config(), {"model.weights": str(weights), "model.threads": 2})
    return Tagger.from_config(config)


def free_endpoint() -> str:
    import zmq

    socket = zmq.Context.instance().socket(zmq.PUB)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    socket.close(linger=0)
    return f"tcp://127.0.0.1:{port}"


def test_tag_equals_run_fast_and_live_publishing(tagger: Tagger, shared) -> None:
    """``tag FILE`` and ``run --source file:FILE --pace fast`` give the same probabilities;
    every tags message arrives with contiguous seq, and the status reports the run."""
    speech = shared("audio/clips/speech.wav")
    offline = tag_file(speech, tagger, window_s=3.0, hop_s=1.0).windows
    assert len(offline) == 8  # 10 s: windows at 0..7 s, the last ending at 10 s
    assert tagger.labels[int(np.argmax(offline[0].probs))] == "Speech"

    endpoint = free_endpoint()
    config = apply_overrides(
        Config(),
        {
            "sources": [{"id": "talk", "spec": f"file:{speech}"}],
            "pipeline.pace": "fast",
            "publish.endpoints": [endpoint],
            "publish.wait_for_subscribers": 1,
            "windows.window": 3.0,
            "windows.hop": 1.0,
        },
    )
    received: list = []
    with Subscriber(endpoint) as subscriber:
        reader_done = threading.Event()

        def read() -> None:
            while (message := subscriber.receive(timeout=30)) is not None:
                received.append(message)
                if isinstance(message, Status) and message.counters["windows_tagged"] == 8:
                    break
            reader_done.set()

        reader = threading.Thread(target=read)
        reader.start()
        pipeline = run_live(config, tagger=tagger, install_signal_handlers=False)
        reader.join(30)
    tags = [m for m in received if isinstance(m, Tags)]
    assert [m.seq for m in tags] == list(range(len(offline)))
    assert subscriber.gaps == 0
    for live, ref in zip(tags, offline, strict=True):
        # Same windows, same model; only the batch composition differs (float rounding).
        np.testing.assert_allclose(live.probs, ref.probs, atol=1e-6)
        assert live.t_end - live.t_start == pytest.approx(3.0)
    assert tags[0].top[0][0] == "Speech"
    final = [m for m in received if isinstance(m, Status)][-1]
    assert final.labels == tagger.labels
    assert final.counters["windows_tagged"] == 8
    assert final.counters["windows_dropped"] == 0
    assert final.latency["n"] == 8
    assert pipeline.streams[0].counters.windows_tagged == 8


def test_streams_share_batches_each_with_contiguous_seq(tagger: Tagger, shared) -> None:
    """Two files in one pipeline: windows of different streams share forward passes, and
    every stream's results arrive complete and in order."""
    paths = [shared("audio/clips/typing.wav"), shared("audio/clips/music.wav")]
    sources = [open_source(p.stem, f"file:{p}", pace="fast") for p in paths]
    collector = Collector()
    both_queued = threading.Event()

    def infer_once_both_are_waiting(mels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # The first pass waits until both streams have windows waiting (each holds up to
        # max_pending_windows; a file read to its end has queued all of its windows), so
        # the passes after it take windows of both.
        if not both_queued.is_set():
            deadline = time.monotonic() + 60
            while not all(
                s.source.ended or s.frontend.frames_emitted >= 400 for s in pipeline.streams
            ):
                assert time.monotonic() < deadline, "the streams never both had windows"
                time.sleep(0.01)
            both_queued.set()
        return tagger.worker.infer(mels)

    pipeline = Pipeline(
        sources,
        infer_once_both_are_waiting,
        [collector],
        window_s=2.0,
        hop_s=0.5,
    )
    pipeline.run()
    by_stream: dict[str, list[int]] = {}
    for result in collector.results:
        by_stream.setdefault(result.stream, []).append(result.start_frame)
    for stream, starts in by_stream.items():
        assert starts == sorted(starts), stream
        assert starts[:-1] == list(range(0, 50 * (len(starts) - 1), 50)), stream
    assert set(by_stream) == {"typing", "music"}
    assert pipeline.batches.multi_stream_passes > 0
    assert pipeline.batches.windows == len(collector.results)


def test_stagger_spreads_the_streams_windows_over_the_hop(tagger: Tagger, shared) -> None:
    """With ``stagger``, each stream's windows after its first fall due at its own phase of
    the hop (golden-ratio sequence: 0, 0.618, 0.236 of 50 frames); each file is still
    tagged to its end."""
    names = ["typing", "music", "speech"]
    paths = [shared(f"audio/clips/{name}.wav") for name in names]
    sources = [open_source(p.stem, f"file:{p}", pace="fast") for p in paths]
    collector = Collector()
    pipeline = Pipeline(
        sources, tagger.worker.infer, [collector], window_s=2.0, hop_s=0.5, stagger=True
    )
    pipeline.run()
    starts: dict[str, list[int]] = {}
    for result in collector.results:
        if not result.final:
            starts.setdefault(result.stream, []).append(result.start_frame)
    for name, phase in zip(names, (0, 30, 11), strict=True):
        assert starts[name][0] == 0
        assert starts[name][1:] == list(range(phase + 50, 50 * len(starts[name]), 50)), name
        # 10 s clips: 1000 frames, the last ones in a final window where the phase left a tail
        assert max(r.stop_frame for r in collector.results if r.stream == name) == 1000


def run_cli_process(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "soundwatch.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_mid_stream_ends_cleanly_with_final_messages(shared, signum) -> None:
    """SIGTERM or SIGINT (Ctrl-C) while tagging the synthetic source: exit status 0, the
    final status message (``ended``) is published, and no thread is left behind."""
    weights = shared("models/mn04_as_mAP_432.pt")
    endpoint = free_endpoint()
    with Subscriber(endpoint) as subscriber:
        process = run_cli_process(
            "run",
            "--source",
            "demo=synthetic",
            "--weights",
            str(weights),
            "--publish",
            endpoint,
            "--window",
            "1",
            "--hop",
            "0.25",
        )
        try:
            tags = 0
            deadline = time.monotonic() + 60
            while tags < 3 and time.monotonic() < deadline:
                message = subscriber.receive(timeout=1)
                tags += isinstance(message, Tags)
            assert tags == 3, "no tags from the running pipeline"
            process.send_signal(signum)
            process.wait(timeout=60)
        finally:
            process.kill()
        stderr = process.stderr.read()
        assert process.returncode == 0, stderr
        assert "threads left: none" in stderr
        rest = []
        while (message := subscriber.receive(timeout=2)) is not None:
            rest.append(message)
        statuses = [m for m in rest if isinstance(m, Status)]
        assert statuses, "the final status message was not published"
        assert statuses[-1].stream == "demo" and statuses[-1].ended


def test_run_jsonl_and_tag_json_agree(shared, tmp_path: Path) -> None:
    """The CLI: ``tag --json --probs`` and ``run --pace fast --jsonl`` print the same
    probabilities for a file (one code path)."""
    weights = shared("models/mn04_as_mAP_432.pt")
    clip = shared("audio/clips/metro_station-paris.wav")
    common = ["--weights", str(weights), "--window", "2", "--hop", "1"]
    tagged = subprocess.run(
        [sys.executable, "-m", "soundwatch.cli", "tag", str(clip), "--json", "--probs", *common],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert tagged.returncode == 0, tagged.stderr
    windows = [json.loads(line) for line in tagged.stdout.splitlines()]
    jsonl = tmp_path / "out.jsonl"
    ran = subprocess.run(
        [
            *(sys.executable, "-m", "soundwatch.cli", "run", "--source", f"metro=file:{clip}"),
            *("--pace", "fast", "--jsonl", str(jsonl), "--publish", free_endpoint(), *common),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    published = [json.loads(line) for line in jsonl.read_text().splitlines()]
    tags = [m for m in published if m["kind"] == "tags"]
    assert len(tags) == len(windows) > 5
    for window, message in zip(windows, tags, strict=True):
        np.testing.assert_allclose(window["probs"], message["probs"], atol=2e-6)
    rail = {"Train", "Rail transport", "Railroad car, train wagon", "Subway, metro, underground"}
    assert windows[-1]["top"][0][0] in rail  # the train arrives in the clip's last seconds


def test_nonfinite_samples_are_counted_not_propagated(tagger: Tagger, tmp_path: Path) -> None:
    """NaN and Inf in the input (raw float PCM) are replaced, counted per stream, and
    never reach the probabilities."""
    rng = np.random.default_rng(3)
    audio = (0.1 * rng.standard_normal(32000 * 3)).astype("<f4")
    audio[1000:1010] = np.nan
    audio[50000] = np.inf
    raw = tmp_path / "noisy.f32"
    raw.write_bytes(audio.tobytes())
    source = open_source("raw", f"pcm:{raw}?format=f32le&rate=32000")
    collector = Collector()
    pipeline = Pipeline([source], tagger.worker.infer, [collector], window_s=1.0, hop_s=0.5)
    pipeline.run()
    assert pipeline.streams[0].nonfinite_samples == 11
    assert collector.results
    assert all(np.isfinite(r.probs).all() for r in collector.results)


def typing_silence_speech(shared, tmp_path: Path) -> tuple[Path, float]:
    """A file of typing, 3 s of silence, then speech; returns it and the speech onset."""
    import soundfile

    typing, rate = soundfile.read(shared("audio/clips/typing.wav"), dtype="float32")
    speech, _ = soundfile.read(shared("audio/clips/speech.wav"), dtype="float32")
    path = tmp_path / "typing_silence_speech.wav"
    soundfile.write(path, np.concatenate([typing, np.zeros(3 * rate, np.float32), speech]), rate)
    return path, (len(typing) + 3 * rate) / rate


def test_events_are_published_live_with_start_and_end(tagger: Tagger, shared, tmp_path) -> None:
    """The default config publishes events.<stream>: a start when a sound is known, an end
    when it is over, with the envelope's contiguous seq; tags keep their own seq."""
    path, speech_onset = typing_silence_speech(shared, tmp_path)
    endpoint = free_endpoint()
    config = apply_overrides(
        Config(),
        {
            "sources": [{"id": "desk", "spec": f"file:{path}"}],
            "pipeline.pace": "fast",
            "publish.endpoints": [endpoint],
            "publish.wait_for_subscribers": 1,
        },
    )
    received: list = []
    finished = threading.Event()
    with Subscriber(endpoint, topics=["events.", "status."]) as subscriber:

        def read() -> None:  # a SUB socket only connects while its thread uses it
            while (message := subscriber.receive(timeout=2)) is not None or not finished.is_set():
                if message is not None:
                    received.append(message)

        reader = threading.Thread(target=read)
        reader.start()
        pipeline = run_live(config, tagger=tagger, install_signal_handlers=False)
        finished.set()
        reader.join(30)
    origin = pipeline.streams[0].first_t  # Unix time of the file's first sample
    assert isinstance(received[-1], Status)  # the final status comes after the last event
    final = received[-1].counters
    assert final["events_windows"] == final["windows_tagged"] and final["events_events"] >= 2
    assert final["events_uncovered_steps"] == 0
    events = [m for m in received if isinstance(m, Event)]
    assert [m.seq for m in events] == list(range(len(events)))
    assert all(m.topic == "events.desk" for m in events)
    by_id: dict[int, list[Event]] = {}
    for message in events:
        by_id.setdefault(message.event_id, []).append(message)
    for messages in by_id.values():
        assert [m.state for m in messages] == ["start", "end"]
        start, end = messages
        assert start.offset is None and end.offset is not None
        assert start.onset == end.onset < end.offset
        assert start.t_pub <= end.t_pub
    starts = [(m.label, m.onset - origin) for m in events if m.state == "start"]
    typing = [onset for label, onset in starts if label == "keyboard_typing"]
    speech = [onset for label, onset in starts if label == "speech"]
    assert typing and speech, starts
    assert typing[0] == pytest.approx(0.0, abs=0.5)  # typing starts the file
    assert speech[0] == pytest.approx(speech_onset, abs=0.5)


def test_event_windows_differing_from_tag_windows_get_their_own_series(tagger, shared) -> None:
    """Tags every 1 s of 1 s windows; events on 3 s windows every 0.5 s: two window
    series from the same mel frames, each delivered to its own consumers in time order."""
    speech = shared("audio/clips/speech.wav")
    source = open_source("s", f"file:{speech}", pace="fast")
    collector = Collector()
    pipeline = Pipeline(
        [source],
        tagger.worker.infer,
        [collector],
        window_s=1.0,
        hop_s=1.0,
        events_window=(3.0, 0.5),
    )
    pipeline.run()
    tags = [r for r in collector.results if r.purposes == {"tags"}]
    events = [r for r in collector.results if r.purposes == {"events"}]
    assert [r.start_frame for r in tags] == list(range(0, 1000, 100))
    assert [r.start_frame for r in events] == list(range(0, 701, 50))
    assert all(r.stop_frame - r.start_frame == 300 for r in events)
    assert pipeline.streams[0].counters.windows_tagged == len(tags)

"""Events on real audio through the real pipeline and mn04: scenes-dev and a known file.

Audio goes through ``soundwatch.runner.tag_file`` (streaming frontend, ``MelWindower``,
batched inference: the live path at full speed), and the window results through the
streaming ``EventsHandler``, as ``soundwatch run`` would deliver them.
"""

from __future__ import annotations

import csv
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO_ROOT, shared_file

from benchmarks.scoring import Collars, LabelledEvent, Score, score_events
from soundwatch.client import Subscriber
from soundwatch.config import Config, apply_overrides
from soundwatch.events import (
    EventsConfig,
    build_settings,
    detect_events_offline,
    detected_from_messages,
)
from soundwatch.models import InferenceWorker, load_model
from soundwatch.pipeline import Pipeline
from soundwatch.runner import Tagger, run_live, tag_file
from soundwatch.sinks.messages import Event, Status


@pytest.fixture(scope="module")
def tagger() -> Tagger:
    loaded = load_model("mn04", shared_file("models/mn04_as_mAP_432.pt"), download=False)
    return Tagger(loaded, InferenceWorker(loaded, device="cpu", threads=2))


def run_events(path: Path, tagger: Tagger, config: EventsConfig):
    """Tag ``path`` as ``soundwatch tag --events`` does (the live pipeline's code path);
    return (events in seconds from the start, window results, settings)."""
    loaded = tagger.loaded
    settings = build_settings(
        config,
        loaded.labels,
        loaded.mids,
        find_ontology=lambda: shared_file("models/ontology.json"),
    )
    tagged = tag_file(path, tagger, config.window, config.hop, events=config)
    results = tagged.windows
    origin = results[0].t_start - results[0].start_frame / 100
    return detected_from_messages(tagged.events, origin), results, settings


#: Absolute floors, whatever docs/events.md says: the issue's targets, event F1 >= 0.5 with a
#: mean onset error <= 0.4 s on scenes the thresholds never saw (scenes-dev is half seen by
#: the preset, tuned on generated scenes of the first ESC-50 clips; docs/events.md).
F1_FLOOR = 0.5
ONSET_ERROR_CEILING_S = 0.4
DOCUMENTED_ROW = "| soundwatch, shipped preset (tuned on A) | scenes-dev |"


def documented_row() -> tuple[float, float]:
    """F1 and onset error of the shipped preset on scenes-dev in docs/events.md."""
    text = (REPO_ROOT / "docs" / "events.md").read_text(encoding="utf-8")
    line = next(li for li in text.splitlines() if li.startswith(DOCUMENTED_ROW))
    cells = [c.strip() for c in line.strip("|").split("|")]
    f1, err = float(cells[2]), float(cells[5])
    assert re.fullmatch(r"\d\.\d{3}", cells[2]), line
    return f1, err


def test_scenes_dev_event_f1_stays_at_the_documented_level(tagger):
    scenes = shared_file("audio/scenes-dev")
    truth: dict[str, list[LabelledEvent]] = {}
    with open(scenes / "ground_truth.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            onset, offset = float(row["onset_s"]), float(row["offset_s"])
            truth.setdefault(row["scene"], []).append(
                LabelledEvent(row["esc50_category"], onset, offset)
            )
    config = EventsConfig(preset="esc50", groups={})  # exactly the ESC-50 categories
    event, onset = Score({}), Score({})
    for scene, true_events in sorted(truth.items()):
        streamed, results, settings = run_events(scenes / f"{scene}.wav", tagger, config)
        # The live detector gives exactly the offline events of the same windows.
        offline = detect_events_offline(
            np.array([r.start_frame for r in results]),
            np.array([r.stop_frame for r in results]),
            np.stack([r.probs for r in results]),
            settings,
        )
        assert [(e.label, round(e.onset, 6), round(e.offset, 6)) for e in streamed] == [
            (e.label, round(e.onset, 6), round(e.offset, 6)) for e in offline
        ]
        detected = [LabelledEvent(e.label, e.onset, e.offset) for e in streamed]
        event.add(score_events(true_events, detected, Collars()))
        onset.add(score_events(true_events, detected, Collars(onset_only=True)))
    documented_f1, documented_error = documented_row()
    # Ratchet: no worse than the table the benchmark wrote (3 and 2 decimals shown).
    assert round(event.micro.f1, 3) >= documented_f1
    assert round(event.micro.mean_onset_error, 2) <= documented_error
    # Absolute: a regression cannot be documented away by rerunning the benchmark.
    assert event.micro.f1 >= F1_FLOOR
    assert event.micro.mean_onset_error <= ONSET_ERROR_CEILING_S


def test_typing_silence_speech_gives_typing_then_speech(tagger, tmp_path):
    clips = shared_file("audio/clips")
    typing, rate = sf.read(clips / "typing.wav", dtype="float32")
    speech, speech_rate = sf.read(clips / "speech.wav", dtype="float32")
    assert rate == speech_rate == 32000
    silence = np.zeros(3 * rate, dtype=np.float32)
    path = tmp_path / "typing_silence_speech.wav"
    sf.write(path, np.concatenate([typing, silence, speech]), rate)
    speech_onset = (len(typing) + len(silence)) / rate

    config = EventsConfig(
        preset=None,
        groups={
            "typing": {"labels": ["Typing", "Computer keyboard"]},
            "speech": {"subtrees": ["Speech"]},
        },
    )
    events, _, _ = run_events(path, tagger, config)
    assert [e.label for e in events] == ["typing", "speech"]
    typing_event, speech_event = events
    assert abs(typing_event.onset - 0.0) <= 0.5
    assert abs(speech_event.onset - speech_onset) <= 0.5
    assert typing_event.offset <= speech_event.onset
    assert abs(typing_event.offset - len(typing) / rate) <= 1.0
    assert abs(speech_event.offset - (speech_onset + len(speech) / rate)) <= 1.0


def free_endpoint() -> str:
    import zmq

    socket = zmq.Context.instance().socket(zmq.PUB)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    socket.close(linger=0)
    return f"tcp://127.0.0.1:{port}"


def test_shutdown_mid_event_publishes_its_end(tagger):
    # A live run of typing.wav looped (typing never stops) is stopped as soon as the first
    # event starts: the stop must still publish that event's end, before the final status.
    endpoint = free_endpoint()
    config = apply_overrides(
        Config(),
        {
            "sources": [
                {
                    "id": "desk",
                    "spec": f"file:{shared_file('audio/clips/typing.wav')}",
                    "loop": True,
                }
            ],
            "pipeline.pace": "fast",
            "publish.endpoints": [endpoint],
            "publish.wait_for_subscribers": 1,
            "events.preset": None,
            "events.groups": {"typing": {"labels": ["Typing", "Computer keyboard"]}},
        },
    )
    received: list = []
    stopped_at: list[int] = []
    running: list[Pipeline] = []
    finished = threading.Event()
    with Subscriber(endpoint, topics=["events.", "status."]) as subscriber:

        def read() -> None:  # a SUB socket only connects while its thread uses it
            while (message := subscriber.receive(timeout=2)) is not None or not finished.is_set():
                if message is None:
                    continue
                received.append(message)
                if isinstance(message, Event) and message.state == "start" and not stopped_at:
                    stopped_at.append(len(received))
                    running[0].stop()  # what SIGTERM does

        reader = threading.Thread(target=read)
        reader.start()
        # The source loops forever: if no event ever starts, stop anyway (and fail below)
        # instead of hanging until pytest's timeout.
        backstop = threading.Timer(120, lambda: running and running[0].stop())
        backstop.start()
        try:
            run_live(
                config,
                tagger=tagger,
                on_ready=lambda pipeline, _endpoints, _notes: running.append(pipeline),
                install_signal_handlers=False,
            )
        finally:
            backstop.cancel()
            finished.set()
            reader.join(30)
    assert not reader.is_alive()
    assert stopped_at, "the looped typing must start an event"
    events = [m for m in received if isinstance(m, Event)]
    starts = [m.event_id for m in events if m.state == "start"]
    ends = {m.event_id: m for m in events if m.state == "end"}
    assert sorted(starts) == sorted(ends), events
    first = events[0]
    assert first.state == "start" and first.event_id in ends
    # The typing was still going: its end came from the shutdown, after the stop.
    assert received.index(ends[first.event_id]) >= stopped_at[0]
    assert ends[first.event_id].offset > first.onset
    assert isinstance(received[-1], Status)

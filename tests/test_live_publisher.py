"""What the live publisher sends: smoothed tags and group scores, status with the run's
groups and stream ends, and the mel topic only while a subscriber asks for it; over real
ZeroMQ sockets. Also the publisher's failure modes: a busy endpoint, a closed JSON pipe."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

from soundwatch.client import Subscriber
from soundwatch.errors import SoundwatchError
from soundwatch.events.groups import Group, ScoreTable
from soundwatch.results import TAGS, StreamReport, WindowResult
from soundwatch.sinks.live import GroupTable, LivePublisher, LiveSettings, OptionalTopic
from soundwatch.sinks.mel import MEL_BINS, MelTap
from soundwatch.sinks.messages import Embedding, Event, Mel, Status, Tags
from soundwatch.sinks.publisher import JsonLinesOutput, Publisher, ZmqOutput
from soundwatch.sinks.smoothing import TagSmoother

LABELS = [f"class{i}" for i in range(6)]


# --- smoothing -------------------------------------------------------------------------------
def test_ema_reaches_a_step_with_the_configured_time_constant() -> None:
    hop, width = 0.5, 1.0
    smoother = TagSmoother("ema", width, hop)
    smoother.push(np.zeros(3, np.float32))
    alpha = 1 - math.exp(-hop / width)
    values = [smoother.push(np.ones(3, np.float32))[0] for _ in range(4)]
    expected = [1 - (1 - alpha) ** n for n in range(1, 5)]
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    # After `width` seconds (two hops) a step has covered 1 - 1/e of the way.
    assert values[1] == pytest.approx(1 - math.exp(-1), rel=1e-6)
    smoother.reset()
    np.testing.assert_array_equal(smoother.push(np.full(3, 0.25, np.float32)), 0.25)


def test_median_ignores_a_single_window_blip_and_none_is_identity() -> None:
    median = TagSmoother("median", 1.5, 0.5)  # the last 3 windows
    outputs = [median.push(np.array([v], np.float32))[0] for v in (0.1, 0.1, 0.9, 0.1, 0.1)]
    assert outputs == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.1])
    raw = np.array([0.3, 0.7], np.float32)
    np.testing.assert_array_equal(TagSmoother("none", 1.0, 0.5).push(raw), raw)
    with pytest.raises(ValueError, match="unknown smoothing method 'mean'"):
        TagSmoother("mean", 1.0, 0.5)


# --- the live publisher over real sockets ----------------------------------------------------
def result(stream: str, index: int, probs: np.ndarray, final: bool = False) -> WindowResult:
    return WindowResult(
        stream=stream,
        start_frame=index * 50,
        stop_frame=index * 50 + 300,
        t_start=1000.0 + index * 0.5,
        t_end=1003.0 + index * 0.5,
        offset_s=index * 0.5,
        probs=probs.astype(np.float32),
        embedding=np.arange(4, dtype=np.float32) + index,
        t_ingest=time.monotonic(),
        final=final,
        purposes=frozenset({TAGS}),
    )


class Reports:
    """Stand-in for the pipeline's stream reports."""

    def __init__(self) -> None:
        self.ended: set[str] = set()

    def __call__(self) -> list[StreamReport]:
        return [
            StreamReport(
                stream=s,
                source={"kind": "file"},
                counters={"windows_tagged": 3},
                t_first=1000.0,
                t_last_end=1004.0,
                ended=s in self.ended,
                error="OSError: gone" if s == "b" and s in self.ended else None,
            )
            for s in ("a", "b")
        ]


def connected(publisher: Publisher, subscriber: Subscriber) -> None:
    """Publish probe events until the subscriber hears one (PUB/SUB joins asynchronously)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        publisher.publish(Event(stream="probe", t_start=0.0, t_end=0.0))
        if subscriber.receive(timeout=0.05) is not None:
            while subscriber.receive(timeout=0.05) is not None:
                pass
            return
    raise AssertionError("subscriber never connected")


def drain(subscriber: Subscriber, timeout: float = 0.5) -> list:
    got = []
    while (message := subscriber.receive(timeout=timeout)) is not None:
        got.append(message)
    return got


@pytest.fixture
def wired():
    output = ZmqOutput(["tcp://127.0.0.1:0"])
    publisher = Publisher([output])
    reports = Reports()
    groups = GroupTable(
        names=["pair", "single"],
        table=ScoreTable.of([Group("pair", (0, 1)), Group("single", (2,))]),
        thresholds=[0.4, 0.2],
    )
    settings = LiveSettings(
        model_name="mn04",
        labels=LABELS,
        window_s=3.0,
        hop_s=0.5,
        events_window=(3.0, 0.5),
        top_k=2,
        status_interval=3600.0,
        smoothing="ema",
        smoothing_width=1.0,
        groups=groups,
    )
    tap = MelTap()
    live = LivePublisher(publisher, settings, reports, lambda s: {"events_events": 2}, tap)
    yield output, publisher, reports, live, tap
    publisher.close()


def test_tags_carry_raw_and_smoothed_probabilities_top_by_smoothed_and_group_scores(wired):
    output, publisher, _, live, _ = wired
    with Subscriber(output.endpoints[0], topics=["tags.", "events.probe"]) as subscriber:
        connected(publisher, subscriber)
        loud = np.array([0.0, 0.0, 0.0, 0.0, 0.9, 0.3])
        steady = np.array([0.8, 0.1, 0.05, 0.0, 0.0, 0.3])
        for i in range(6):
            live.on_result(result("a", i, steady))
        live.on_result(result("a", 6, loud))  # a one-window blip
        tags = [m for m in drain(subscriber) if isinstance(m, Tags)]
    assert [m.seq for m in tags] == list(range(7))
    blip = tags[-1]
    np.testing.assert_allclose(blip.probs, loud, atol=1e-7)
    assert blip.top[0][0] == "class0"  # the blip does not take over the smoothed top
    alpha = 1 - math.exp(-0.5 / 1.0)  # hop 0.5 s, time constant 1 s
    assert blip.smoothed[0] == pytest.approx(0.8 * (1 - alpha), rel=1e-5)
    assert blip.smoothed[4] == pytest.approx(0.9 * alpha, rel=1e-5)
    assert blip.groups == pytest.approx(
        {"pair": float(blip.smoothed[:2].max()), "single": float(blip.smoothed[2])}
    )


def test_status_names_groups_thresholds_and_the_end_of_each_stream(wired):
    output, publisher, reports, live, _ = wired
    with Subscriber(output.endpoints[0], topics=["status.", "events.probe"]) as subscriber:
        connected(publisher, subscriber)
        live.on_tick()  # the first status goes out at once
        reports.ended.add("b")
        live.on_stream_end("b")  # only b's status, saying it ended and why
        statuses = [m for m in drain(subscriber) if isinstance(m, Status)]
    assert [(s.stream, s.ended) for s in statuses] == [("a", False), ("b", False), ("b", True)]
    first, _, last = statuses
    assert first.groups == {"pair": pytest.approx(0.4), "single": pytest.approx(0.2)}
    assert (first.events_window, first.events_hop) == (3.0, 0.5)
    assert first.counters["events_events"] == 2 and first.counters["windows_tagged"] == 3
    assert last.error == "OSError: gone" and first.error == ""


def frames(value: float, count: int) -> np.ndarray:
    return np.full((128, count), value, np.float32)


def test_mel_is_published_only_while_a_subscriber_asks_for_it(wired):
    output, publisher, _, live, tap = wired
    endpoint = output.endpoints[0]
    with Subscriber(endpoint, topics=[""]) as everything:  # "" alone does not ask for mel
        connected(publisher, everything)
        live.on_tick()
        assert not tap.active
        tap.on_frames("a", frames(0.0, 10), 1000.0)
        live._next_mel = 0.0
        live.on_tick()
        assert not [m for m in drain(everything) if isinstance(m, Mel)]
        with Subscriber(endpoint, topics=["mel.", "events.probe"]) as viewer:
            connected(publisher, viewer)
            live._next_mel = 0.0
            live.on_tick()
            assert tap.active
            tap.on_frames("a", frames(-1.5, 10), 1000.0)
            tap.on_frames("a", frames(3.0, 5), 1000.1)  # contiguous: one message
            tap.on_frames("a", frames(0.75, 4), 2000.0)  # the stream restarted: another
            live._next_mel = 0.0
            live.on_tick()
            mels = [m for m in drain(viewer) if isinstance(m, Mel)]
        assert [m.frames.shape for m in mels] == [(15, MEL_BINS), (4, MEL_BINS)]
        assert mels[0].frames[:10].max() == 0 and mels[0].frames[10:].min() == 255
        assert mels[1].frames.min() == mels[1].frames.max() == 128  # the middle of lo..hi
        assert (mels[0].t_start, mels[0].t_end) == pytest.approx((1000.0, 1000.15))
        assert mels[1].t_start == 2000.0 and mels[0].frame_rate == 100.0
        live._next_mel = 0.0
        deadline = time.monotonic() + 10
        while tap.active and time.monotonic() < deadline:  # the viewer left
            live.on_tick()
            live._next_mel = 0.0
        assert not tap.active


def test_embeddings_are_published_only_while_a_subscriber_asks_for_them(wired):
    output, publisher, _, live, _ = wired
    endpoint = output.endpoints[0]
    with Subscriber(endpoint, topics=["", "tags."]) as everything:  # neither asks for them
        connected(publisher, everything)
        live.on_result(result("a", 0, np.full(6, 0.1)))
        got = drain(everything)
        assert any(isinstance(m, Tags) for m in got)
        assert not any(isinstance(m, Embedding) for m in got)
        with Subscriber(endpoint, topics=["embeddings.a", "events.probe"]) as reader:
            connected(publisher, reader)
            live.embeddings_topic.next_check = 0.0  # re-check the subscriptions now, not in 0.5 s
            for i in (1, 2):
                live.on_result(result("a", i, np.full(6, 0.1)))
            embeddings = [m for m in drain(reader) if isinstance(m, Embedding)]
        assert [m.seq for m in embeddings] == [0, 1]
        np.testing.assert_array_equal(embeddings[1].embedding, [2.0, 3.0, 4.0, 5.0])
        assert embeddings[1].embedding.dtype == np.float32
        assert (embeddings[1].t_start, embeddings[1].t_end) == (1001.0, 1004.0)
        deadline = time.monotonic() + 10
        while live.embeddings_topic.wanted() and time.monotonic() < deadline:  # the reader left
            live.embeddings_topic.next_check = 0.0
        assert not live.embeddings_topic.wanted()


def test_on_and_off_topics_ignore_the_subscriptions(wired):
    output, publisher, _, _, _ = wired
    topics = {m: OptionalTopic(publisher, "mel", m, interval=0.0) for m in ("on", "off", "auto")}
    assert [t.wanted() for t in topics.values()] == [True, False, False]  # nobody asks
    with Subscriber(output.endpoints[0], topics=["mel.", "events.probe"]) as viewer:
        connected(publisher, viewer)
        assert [t.wanted() for t in topics.values()] == [True, False, True]  # one asks


# --- publisher failures ----------------------------------------------------------------------
def test_an_endpoint_in_use_is_refused_with_the_fix() -> None:
    first = ZmqOutput(["tcp://127.0.0.1:0"])
    try:
        with pytest.raises(SoundwatchError, match=r"another process .* --publish"):
            ZmqOutput([first.endpoints[0]])
    finally:
        first.close()


def test_a_json_lines_reader_that_goes_away_stops_the_run_clearly(tmp_path: Path) -> None:
    fifo = tmp_path / "out.jsonl"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    output = JsonLinesOutput(str(fifo))
    os.close(reader)
    message = Status(stream="s", t_start=0.0, t_end=0.0)
    with pytest.raises(SoundwatchError, match="closed by its reader \\(broken pipe\\)"):
        output.send(message, b"status.s", b"")
    output.close()  # what could not be written is not retried at close


def test_group_scores_in_tags_are_the_detectors_scores_for_calibrated_groups() -> None:
    """A calibrated group's threshold is on its logistic score: tags must show that score,
    not the highest class probability, or the dashboard compares apples with pears."""
    groups = [Group("dog", (0, 1)), Group("siren", (2, 3), weights=(1.5, -0.5), bias=-1.0)]
    table = GroupTable(["dog", "siren"], ScoreTable.of(groups), [0.5, 0.9])
    probs = np.array([0.2, 0.7, 0.8, 0.1], np.float32)
    scores = table.scores(probs)
    logit = np.log(probs / (1 - probs))
    assert scores["dog"] == pytest.approx(0.7)
    expected = 1 / (1 + math.exp(-(-1.0 + 1.5 * logit[2] - 0.5 * logit[3])))
    assert scores["siren"] == pytest.approx(expected, rel=1e-5)
    assert scores["siren"] != pytest.approx(0.8, abs=1e-3)

"""The recorder without a model: clips cut from the audio ring at the right samples
(pre-roll, post-roll, cap), privacy modes, retention while running, repair of the
history against the clip files."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from soundwatch.recorder.config import RecorderConfig
from soundwatch.recorder.history import History
from soundwatch.recorder.privacy import SPEECH_LABELS
from soundwatch.recorder.recorder import Recorder
from soundwatch.recorder.retention import SIZE_REASON
from soundwatch.recorder.ring import AudioRing
from soundwatch.results import WindowResult
from soundwatch.sinks.messages import Event
from soundwatch.stream import AudioBlock, open_source

RATE = 32000
LABELS = [*SPEECH_LABELS, "Dog", "Bark"]
DEADLINE_S = 30.0


def wait_for(condition, what: str, timeout: float = DEADLINE_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def noise_file(path: Path, seconds: float, seed: int = 0) -> np.ndarray:
    """A file of known content: seeded noise, every sample different; returned as the
    16-bit values the file holds."""
    samples = np.random.default_rng(seed).uniform(-0.5, 0.5, round(seconds * RATE))
    sf.write(path, samples.astype(np.float32), RATE, subtype="PCM_16")
    return sf.read(path, dtype="float32")[0]


def feed_file(recorder: Recorder, stream: str, path: Path) -> float:
    """Every block of the file through the recorder's audio tap, as the pipeline's stream
    thread hands them; returns the Unix time of the first sample."""
    source = open_source(stream, f"file:{path}", pace="fast")
    source.start()
    first = None
    try:
        while not source.ended:
            block = source.read(timeout=0.5)
            if block is not None:
                first = block.t_start if first is None else first
                recorder.on_audio(stream, block)
    finally:
        source.stop()
    assert first is not None
    return first


def event(stream: str, event_id: int, state: str, onset: float, offset: float | None) -> Event:
    return Event(
        stream=stream,
        t_start=onset,
        t_end=offset if offset is not None else onset,
        event_id=event_id,
        label="dog",
        state=state,
        onset=onset,
        offset=offset,
        peak=0.8,
    )


def play_event(recorder: Recorder, stream: str, event_id: int, onset: float, offset: float) -> int:
    start = event(stream, event_id, "start", onset, None)
    recorder.on_event(start)
    recorder.on_event(event(stream, event_id, "end", onset, offset))
    return start.record_id


def config(tmp_path: Path, **overrides) -> RecorderConfig:
    values = {
        "enabled": True,
        "dir": tmp_path / "rec",
        "pre_roll": 2.0,
        "post_roll": 2.0,
        "max_clip": 8.0,
        "ring_slack": 60.0,
        "privacy": "keep_all",
        **overrides,
    }
    return RecorderConfig.model_validate(values)


def test_clips_hold_the_right_samples_with_pre_roll_post_roll_and_cap(tmp_path: Path) -> None:
    audio = noise_file(tmp_path / "known.wav", 40.0)
    recorder = Recorder(config(tmp_path), LABELS, "mn04", streams=["s"])
    try:
        t0 = feed_file(recorder, "s", tmp_path / "known.wav")
        plain = play_event(recorder, "s", 0, t0 + 10.0, t0 + 12.5)
        capped = play_event(recorder, "s", 1, t0 + 20.0, t0 + 35.0)
        early = play_event(recorder, "s", 2, t0 + 0.5, t0 + 2.0)
        late = play_event(recorder, "s", 3, t0 + 38.0, t0 + 39.5)
        recorder.on_stream_end("s")
    finally:
        recorder.close()
    history = History(tmp_path / "rec", create=False)
    rows = {row["id"]: row for row in history.query()}

    def check(row_id: int, start_s: float, end_s: float) -> dict:
        row = rows[row_id]
        assert row["clip"] is not None, row
        clip, rate = sf.read(row["clip"], dtype="float32")
        assert rate == RATE
        a, b = round(start_s * RATE), round(end_s * RATE)
        assert len(clip) == b - a
        np.testing.assert_allclose(clip, audio[a:b], atol=1.5 / 32768)
        assert row["clip_start"] == pytest.approx(t0 + start_s, abs=1e-4)
        assert row["clip_end"] == pytest.approx(t0 + end_s, abs=1e-4)
        return row

    row = check(plain, 8.0, 14.5)  # 2 s before the onset to 2 s after the offset
    assert row["clip_reason"] is None and not row["clip_capped"]
    row = check(capped, 18.0, 26.0)  # max_clip 8 s from the start of its pre-roll
    assert row["clip_capped"] and "max_clip" in row["clip_reason"]
    assert row["offset"] == pytest.approx(t0 + 35.0)  # the event itself keeps its length
    row = check(early, 0.0, 4.0)  # no audio before the file started
    assert "pre-roll short by 1.50 s" in row["clip_reason"]
    row = check(late, 36.0, 40.0)  # the stream ended 0.5 s into the post-roll
    assert "post-roll short by 1.50 s" in row["clip_reason"]
    assert {r["state"] for r in rows.values()} == {"ended"}
    assert recorder.counters("s")["recorder_clips_written"] == 4
    assert recorder.counters("s")["recorder_clips_capped"] == 1


def test_ring_keeps_only_its_last_seconds_and_never_joins_segments() -> None:
    ring = AudioRing(2.0)
    samples = np.arange(3 * RATE, dtype=np.float32)
    for k in range(0, len(samples), 1000):  # 3 s in 1000-sample blocks; only 2 s fit
        ring.write(AudioBlock(samples[k : k + 1000], 100.0 + k / RATE, 0.0))
    assert ring.head_time() == pytest.approx(103.0)
    cut = ring.cut(100.0, 102.5, anchor=101.5)
    assert cut is not None and cut.t_start == pytest.approx(101.0)  # older audio is gone
    np.testing.assert_array_equal(cut.samples, samples[RATE : int(2.5 * RATE)])
    ring.write(AudioBlock(np.full(RATE, -1, np.float32), 200.0, 0.0, new_segment=True))
    before = ring.cut(102.0, 250.0, anchor=102.0)  # ends where its segment ended
    assert before is not None and before.t_end == pytest.approx(103.0)
    after = ring.cut(150.0, 250.0, anchor=200.5)
    assert after is not None and after.t_start == pytest.approx(200.0)
    assert np.all(after.samples == -1) and len(after.samples) == RATE
    assert ring.cut(0.0, 50.0, anchor=10.0) is None


def speech_window(stream: str, t_start: float, t_end: float, speech: float) -> WindowResult:
    probs = np.zeros(len(LABELS), dtype=np.float32)
    probs[LABELS.index("Speech")] = speech
    return WindowResult(stream, 0, 300, t_start, t_end, 0.0, probs, probs, 0.0, False)


@pytest.mark.parametrize(
    ("privacy", "kept"), [("drop_speech", False), ("keep_all", True), ("no_clips", False)]
)
def test_privacy_modes_decide_the_clip_and_the_event_is_always_listed(
    tmp_path: Path, privacy: str, kept: bool
) -> None:
    noise_file(tmp_path / "a.wav", 12.0)
    recorder = Recorder(config(tmp_path, privacy=privacy), LABELS, "mn04", streams=["s"])
    try:
        t0 = feed_file(recorder, "s", tmp_path / "a.wav")
        for k in range(19):  # 3 s windows every 0.5 s; speech heard around 5 s
            start = t0 + 0.5 * k
            recorder.on_result(speech_window("s", start, start + 3.0, 0.9 if k == 8 else 0.1))
        speechy = play_event(recorder, "s", 0, t0 + 5.0, t0 + 6.0)
        recorder.on_stream_end("s")
    finally:
        recorder.close()
    row = History(tmp_path / "rec", create=False).get(speechy)
    assert row is not None and row["state"] == "ended"
    assert (row["clip"] is not None) is kept
    if privacy == "drop_speech":
        assert row["clip_reason"].startswith("privacy: speech heard")
    if privacy == "no_clips":
        assert "no_clips" in row["clip_reason"]


def test_speech_outside_the_clip_does_not_drop_it(tmp_path: Path) -> None:
    noise_file(tmp_path / "a.wav", 20.0)
    recorder = Recorder(config(tmp_path, privacy="drop_speech"), LABELS, "m", streams=["s"])
    try:
        t0 = feed_file(recorder, "s", tmp_path / "a.wav")
        for k in range(35):
            start = t0 + 0.5 * k
            recorder.on_result(speech_window("s", start, start + 3.0, 0.9 if k >= 30 else 0.0))
        quiet = play_event(recorder, "s", 0, t0 + 4.0, t0 + 5.0)  # clip 2..7 s; speech 15+ s
        recorder.on_stream_end("s")
    finally:
        recorder.close()
    row = History(tmp_path / "rec", create=False).get(quiet)
    assert row is not None and row["clip"] is not None


def test_retention_keeps_the_clips_under_a_tiny_size_cap_while_running(tmp_path: Path) -> None:
    noise_file(tmp_path / "a.wav", 30.0)
    cap = 400_000  # a 4 s noise clip in FLAC is about 260 kB: one fits, two do not
    cfg = config(tmp_path, retention={"max_bytes": cap, "max_age_days": 1.0, "interval": 1.0})
    recorder = Recorder(cfg, LABELS, "mn04", streams=["s"])
    try:
        t0 = feed_file(recorder, "s", tmp_path / "a.wav")
        ancient = play_event(recorder, "s", 0, t0 - 3 * 86400.0, t0 - 3 * 86400.0 + 1.0)
        ids = [
            play_event(recorder, "s", k, t0 + 4.0 + 6.0 * k, t0 + 4.0 + 6.0 * k)
            for k in range(1, 4)
        ]
        history = History(tmp_path / "rec", create=False)

        def settled() -> bool:
            rows = {r["id"]: r for r in history.query()}
            return (
                ancient not in rows
                and all(
                    i in rows and (rows[i]["clip"] or rows[i]["clip_reason"] == SIZE_REASON)
                    for i in ids
                )
                and history.clip_bytes() <= cap
            )

        wait_for(settled, "retention to act while the recorder runs")
    finally:
        recorder.close()
    rows = {r["id"]: r for r in history.query()}
    assert rows[ids[-1]]["clip"] is not None  # the newest clip stays
    assert rows[ids[0]]["clip"] is None and rows[ids[0]]["clip_reason"] == SIZE_REASON
    assert 0 < history.clip_bytes() <= cap
    files = sorted((tmp_path / "rec" / "clips").rglob("*.flac"))
    assert [str(f.resolve()) for f in files] == [r["clip"] for r in rows.values() if r["clip"]]


def test_repair_makes_rows_and_files_agree(tmp_path: Path) -> None:
    noise_file(tmp_path / "a.wav", 20.0)
    recorder = Recorder(config(tmp_path), LABELS, "mn04", streams=["s"])
    try:
        t0 = feed_file(recorder, "s", tmp_path / "a.wav")
        gone, unlinked, kept = (
            play_event(recorder, "s", k, t0 + 3.0 + 5.0 * k, t0 + 4.0 + 5.0 * k) for k in range(3)
        )
        recorder.on_stream_end("s")
    finally:
        recorder.close()
    history = History(tmp_path / "rec", create=False)
    Path(history.get(gone)["clip"]).unlink()  # deleted by hand
    # A crash between writing a clip and linking it: the file is there, the row not linked.
    db = sqlite3.connect(tmp_path / "rec" / "events.sqlite")
    db.execute("UPDATE events SET clip=NULL, clip_reason='pending' WHERE id=?", (unlinked,))
    db.commit()
    db.close()
    stray = tmp_path / "rec" / "clips" / "999-s-dog.flac"
    stray.write_bytes(b"no event owns this")
    (tmp_path / "rec" / "clips" / "5-s-dog.part").write_bytes(b"half written")
    report = History(tmp_path / "rec").repair()
    assert (report.missing_clips, report.relinked, report.orphans_removed) == (1, 1, 2)
    rows = {r["id"]: r for r in history.query()}
    assert rows[gone]["clip"] is None and "missing" in rows[gone]["clip_reason"]
    assert rows[unlinked]["clip"] is not None and Path(rows[unlinked]["clip"]).is_file()
    assert rows[kept]["clip"] is not None
    assert not stray.exists()

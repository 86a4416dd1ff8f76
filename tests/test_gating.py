"""Activity gating: windows with nothing new to hear skip the model and carry the last
result, marked as carried, on the mel statistics alone and through the pipeline."""

from __future__ import annotations

import itertools
import time
from typing import Any

import msgpack
import numpy as np
import pytest
from test_live_publisher import LABELS, connected, drain

from soundwatch.client import Subscriber
from soundwatch.dsp import logmel
from soundwatch.dsp.activity import DB_PER_UNIT, ActivityGate, GateSettings
from soundwatch.dsp.windows import MelWindow, MelWindower
from soundwatch.pipeline import Collector, Pipeline
from soundwatch.results import TAGS, WindowResult
from soundwatch.sinks.live import LivePublisher, LiveSettings
from soundwatch.sinks.messages import SCHEMA_VERSION, Tags, decode, encode
from soundwatch.sinks.publisher import Publisher, ZmqOutput
from soundwatch.stream import AudioBlock, Source, SourceStats

RATE = 32000


def room(seconds: float, seed: int, level: float = 0.003) -> np.ndarray:
    """Steady low-level noise, like a quiet room."""
    rng = np.random.default_rng(seed)
    return (level * rng.standard_normal(round(seconds * RATE))).astype(np.float32)


def tone(seconds: float, hz: float, level: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def windows_of(wave: np.ndarray, window_s: float = 3.0, hop_s: float = 0.5) -> list[MelWindow]:
    windower = MelWindower(round(window_s * 100), round(hop_s * 100))
    return windower.push(logmel(wave))


def decisions(gate: ActivityGate, windows: list[MelWindow]) -> list[bool]:
    return [gate.carry(w) for w in windows]


# --- the gate on mel statistics ------------------------------------------------------------
def test_steady_room_noise_is_carried_after_the_first_window() -> None:
    carried = decisions(ActivityGate(GateSettings()), windows_of(room(8.0, 1)))
    assert len(carried) == 11
    assert carried[0] is False  # nothing heard yet: the model must run
    assert all(carried[1:])


def test_a_sound_entering_and_leaving_the_window_is_run_through_the_model() -> None:
    wave = room(14.0, 2)
    wave[5 * RATE : 6 * RATE] += tone(1.0, 1000.0)  # a 1 s tone at 5-6 s
    windows = windows_of(wave)
    carried = decisions(ActivityGate(GateSettings()), windows)
    by_stop = {w.stop: c for w, c in zip(windows, carried, strict=True)}
    assert by_stop[450] is True  # room only, like the window before
    assert by_stop[500] is False  # the tone enters (frame 499 reaches 12.5 ms into it)
    assert by_stop[550] is False  # ...and grows in the window
    window_with_tone_only_at_its_edge = 900  # frames [600, 900): frame 600 touches the tone
    assert by_stop[window_with_tone_only_at_its_edge + 50] is False  # the tone left: run
    assert by_stop[1400] is True  # quiet again afterwards


def test_a_change_of_level_alone_is_heard() -> None:
    wave = room(10.0, 3)
    wave[6 * RATE :] *= 10 ** (6 / 20)  # the same noise 6 dB louder from 6 s
    windows = windows_of(wave)
    carried = decisions(ActivityGate(GateSettings()), windows)
    after = [c for w, c in zip(windows, carried, strict=True) if 600 < w.stop <= 700]
    assert False in after


def test_the_model_hears_a_steady_stream_at_least_every_max_carry_s() -> None:
    windows = windows_of(room(20.0, 4))
    carried = decisions(ActivityGate(GateSettings(max_carry_s=4.0)), windows)
    run_at = [w.stop for w, c in zip(windows, carried, strict=True) if not c]
    assert run_at[0] == 300
    assert all(0 < b - a <= 400 for a, b in itertools.pairwise(run_at))
    assert len(run_at) >= 4


def test_final_windows_and_a_forgotten_reference_are_run() -> None:
    windows = windows_of(room(6.0, 5))
    gate = ActivityGate(GateSettings())
    assert decisions(gate, windows[:3]) == [False, True, True]
    gate.forget()
    assert gate.carry(windows[3]) is False
    final = MelWindow(windows[4].start, windows[4].stop, windows[4].mel, final=True)
    assert gate.carry(final) is False
    assert gate.carry(windows[5]) is False  # after a final window the gate starts afresh


def test_thresholds_are_in_db_and_must_be_positive() -> None:
    assert pytest.approx(21.714724, rel=1e-6) == DB_PER_UNIT
    with pytest.raises(ValueError, match="positive"):
        GateSettings(level_db=0.0)


# --- through the pipeline ------------------------------------------------------------------
class WaveSource(Source):
    """A given waveform in 0.1 s blocks, as fast as it is read (a stand-in for a device)."""

    def __init__(self, stream_id: str, wave: np.ndarray) -> None:
        self.id = stream_id
        self.native_rate = RATE
        self.channels = 1
        self.wave = wave
        self.sent = 0

    def start(self) -> None:
        pass

    def read(self, timeout: float) -> AudioBlock | None:
        if self.ended:
            return None
        block = self.wave[self.sent : self.sent + 3200]
        out = AudioBlock(block, 1000.0 + self.sent / RATE, time.monotonic())
        self.sent += len(block)
        return out

    @property
    def ended(self) -> bool:
        return self.sent >= len(self.wave)

    @property
    def waits_when_behind(self) -> bool:
        return True  # nothing dropped: every window's fate is the gate's alone

    def stats(self) -> SourceStats:
        return SourceStats(samples_in=self.sent)

    def stop(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"kind": "wave"}


class CountingModel:
    """Probabilities that identify the window they were computed from."""

    def __init__(self) -> None:
        self.windows = 0

    def __call__(self, mels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.windows += len(mels)
        probs = np.zeros((len(mels), 527), np.float32)
        probs[:, 0] = mels.mean(axis=(1, 2))
        probs[:, 1] = np.arange(self.windows - len(mels), self.windows)
        return probs, np.zeros((len(mels), 8), np.float32)


def test_pipeline_carries_the_last_result_of_each_stream_and_counts_it() -> None:
    busy = room(10.2, 6)
    busy[3 * RATE : 7 * RATE] += tone(4.0, 700.0) * np.linspace(0, 1, 4 * RATE, dtype=np.float32)
    model = CountingModel()
    collector = Collector()
    pipeline = Pipeline(
        [WaveSource("quiet", room(10.2, 7)), WaveSource("busy", busy)],
        model,
        [collector],
        window_s=3.0,
        hop_s=0.5,
        gate=GateSettings(),
    )
    pipeline.run()
    by_stream: dict[str, list[WindowResult]] = {"quiet": [], "busy": []}
    for result in collector.results:
        by_stream[result.stream].append(result)
    quiet, busy_results = by_stream["quiet"], by_stream["busy"]
    assert len(quiet) == len(busy_results) == 16  # 15 regular windows and the final tail
    assert quiet[-1].final and busy_results[-1].final
    assert model.windows == sum(not r.carried for r in collector.results)
    assert sum(r.carried for r in quiet) >= 13  # quiet: the model ran on the first and tail
    assert sum(r.carried for r in busy_results) < sum(r.carried for r in quiet)
    for results in (quiet, busy_results):
        assert not results[0].carried and not results[-1].carried  # first and final window
        for before, after in itertools.pairwise(results):
            assert after.start_frame > before.start_frame  # each stream in time order
            if after.carried:  # exactly the previous result, its own time span
                np.testing.assert_array_equal(after.probs, before.probs)
                assert after.t_start > before.t_start
    states = {s.id: s for s in pipeline.streams}
    for name, results in by_stream.items():
        counters = states[name].report().counters
        assert counters["windows_carried"] == sum(r.carried for r in results)
        assert counters["windows_tagged"] == len(results)


def test_without_a_gate_every_window_is_run() -> None:
    model = CountingModel()
    collector = Collector()
    Pipeline([WaveSource("quiet", room(5.0, 8))], model, [collector], window_s=3.0, hop_s=0.5).run()
    assert model.windows == len(collector.results) == 5
    assert not any(r.carried for r in collector.results)


# --- on the wire -----------------------------------------------------------------------------
def test_tags_say_carried_on_the_wire_and_older_publishers_mean_not_carried() -> None:
    output = ZmqOutput(["tcp://127.0.0.1:0"])
    publisher = Publisher([output])
    settings = LiveSettings(model_name="mn04", labels=LABELS, window_s=3.0, hop_s=0.5)
    live = LivePublisher(publisher, settings, lambda: [])
    probs = np.linspace(0, 1, len(LABELS), dtype=np.float32)
    try:
        with Subscriber(output.endpoints[0], topics=["tags.", "events.probe"]) as subscriber:
            connected(publisher, subscriber)
            for index, carried in enumerate((False, True)):
                live.on_result(
                    WindowResult(
                        stream="a",
                        start_frame=index * 50,
                        stop_frame=300 + index * 50,
                        t_start=1000.0 + index / 2,
                        t_end=1003.0 + index / 2,
                        offset_s=index / 2,
                        probs=probs,
                        embedding=np.zeros(4, np.float32),
                        t_ingest=time.monotonic(),
                        final=False,
                        purposes=frozenset({TAGS}),
                        carried=carried,
                    )
                )
            tags = [m for m in drain(subscriber) if isinstance(m, Tags)]
    finally:
        publisher.close()
    assert [m.carried for m in tags] == [False, True]
    message = Tags(stream="a", t_start=0.0, t_end=1.0, seq=0, probs=probs, carried=True)
    topic, payload = encode(message)
    body = msgpack.unpackb(payload)
    del body["carried"]  # a publisher from before the field existed
    assert body["v"] == SCHEMA_VERSION
    older = decode(topic, msgpack.packb(body, use_bin_type=True))
    assert isinstance(older, Tags) and older.carried is False
    body["carried"] = 1  # not a bool
    with pytest.raises(Exception, match="carried"):
        decode(topic, msgpack.packb(body, use_bin_type=True))


def test_the_run_gates_by_default_with_the_documented_thresholds() -> None:
    from soundwatch.config import Config, apply_overrides
    from soundwatch.runner import gate_settings

    assert gate_settings(Config()) == GateSettings(level_db=2.0, spectrum_db=1.0, max_carry_s=10)
    assert gate_settings(Config()) == GateSettings()  # the config's defaults are the gate's
    assert gate_settings(apply_overrides(Config(), {"pipeline.gate": {"enabled": False}})) is None

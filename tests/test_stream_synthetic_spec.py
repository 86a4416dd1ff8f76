"""Synthetic demo source (deterministic, paced) and ``[ID=]SPEC`` parsing."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from soundwatch.errors import SoundwatchError
from soundwatch.stream import (
    FileSource,
    PcmSource,
    SyntheticSource,
    open_source,
    parse_source_arg,
    parse_source_spec,
)
from soundwatch.stream.synthetic import PROGRAMME, render_segment


def _collect(source: SyntheticSource, n: int, sizes: list[int]) -> np.ndarray:
    parts = []
    k = 0
    total = 0
    while total < n:
        size = min(sizes[k % len(sizes)], n - total)
        k += 1
        parts.append(source.generate(size))
        total += size
    return np.concatenate(parts)


def test_synthetic_is_deterministic_for_a_seed_whatever_the_chunking():
    cycle = int(sum(seconds for _, seconds, _ in PROGRAMME) * 32000)
    a = _collect(SyntheticSource(seed=7), cycle + 5000, [32000])
    b = _collect(SyntheticSource(seed=7), cycle + 5000, [1, 999, 12345, 7])
    c = _collect(SyntheticSource(seed=8), cycle + 5000, [32000])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.float32 and np.abs(a).max() <= 1.0
    # every programme segment is audible except the quiet one
    start = 0
    for index, (name, seconds, _) in enumerate(PROGRAMME):
        n = int(seconds * 32000)
        rms = float(np.sqrt(np.mean(a[start : start + n] ** 2)))
        assert (rms < 0.01) == (name == "quiet"), (name, rms)
        np.testing.assert_array_equal(a[start : start + n], render_segment(7, index)[1])
        start += n


def test_synthetic_beeps_have_their_tone():
    name, beeps = render_segment(0, 0)
    assert name == "beeps"
    spectrum = np.abs(np.fft.rfft(beeps))
    peak = np.argmax(spectrum) * 32000 / len(beeps)
    assert 3000 <= peak <= 3400


def test_the_tagger_recognises_the_synthetic_sounds(shared):
    import torch

    from soundwatch.dsp import logmel
    from soundwatch.models import load_model

    weights = shared("models/mn04_as_mAP_432.pt")
    tagger = load_model("mn04", weights=weights, download=False)
    expected = {
        "beeps": {"Smoke detector, smoke alarm", "Beep, bleep"},
        "siren": {"Siren"},
        "noise bursts": {"Static", "White noise"},
        "whistle": {"Whistle"},
        "quiet": {"Silence"},
    }
    for seed, index in itertools.product((0, 3), range(len(PROGRAMME))):
        name, samples = render_segment(seed, index)
        mel = torch.from_numpy(np.asarray(logmel(samples)))[None, None]
        with torch.inference_mode():
            output = tagger.model(mel)
        logits = output[0] if isinstance(output, tuple) else output
        top3 = {tagger.labels[k] for k in torch.topk(logits[0], 3).indices.tolist()}
        assert expected[name] & top3, (seed, name, top3)


def test_synthetic_realtime_pace_and_fast_pace():
    source = open_source("synthetic", "synthetic?seed=3")
    assert isinstance(source, SyntheticSource) and source.seed == 3
    source.start()
    started = time.monotonic()
    blocks = []
    while time.monotonic() - started < 0.3:
        block = source.read(0.05)
        if block is not None:
            blocks.append(block)
    released = sum(len(b.samples) for b in blocks)
    assert 0 < released <= (time.monotonic() - started + 0.02) * 32000
    for a, b in itertools.pairwise(blocks):
        assert b.t_start == pytest.approx(a.t_end, abs=1e-6)
    fast = SyntheticSource(seed=3, pace="fast", duration=2.0)
    fast.start()
    got = []
    while not fast.ended:
        block = fast.read(0.01)
        assert block is not None
        got.append(block.samples)
    np.testing.assert_array_equal(
        np.concatenate(got), _collect(SyntheticSource(seed=3), 64000, [64000])
    )
    assert fast.read(0.01) is None


def test_parse_source_arg_ids_and_defaults():
    assert parse_source_arg("mic") == ("mic", "mic")
    assert parse_source_arg("kitchen=mic:USB Audio") == ("kitchen", "mic:USB Audio")
    assert parse_source_arg("mic:2") == ("mic", "mic:2")
    assert parse_source_arg("file:/data/street noise.flac") == (
        "street_noise",  # a valid stream id made from the name
        "file:/data/street noise.flac",
    )
    assert parse_source_arg("file:a=b.wav") == ("a_b", "file:a=b.wav")
    assert parse_source_arg("door=file:x.wav") == ("door", "file:x.wav")
    assert parse_source_arg("pcm:-") == ("pcm", "pcm:-")
    assert parse_source_arg("pcm:-?rate=48000&channels=2") == ("pcm", "pcm:-?rate=48000&channels=2")
    assert parse_source_arg("synthetic") == ("synthetic", "synthetic")
    assert parse_source_arg("demo=synthetic?seed=4") == ("demo", "synthetic?seed=4")


def test_parse_source_spec_fields():
    spec = parse_source_spec("mic:usb?channels=2&rate=48000")
    assert (spec.kind, spec.target, spec.options) == (
        "mic",
        "usb",
        {"channels": "2", "rate": "48000"},
    )
    assert parse_source_spec("mic").target is None
    assert parse_source_spec("mic?blocksize=256").options == {"blocksize": "256"}
    assert parse_source_spec("file:odd?name.wav").target == "odd?name.wav"  # paths keep '?'


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("speaker", "unknown source 'speaker'; valid source forms"),
        ("http://x", "unknown source"),
        ("", "empty source"),
        ("x=", "has an id but no spec"),
        ("file:", "needs a path"),
        ("pcm:", "needs '-'"),
        ("synthetic:3", "synthetic takes no ':'"),
        ("pcm:-?rate", "bad option 'rate'"),
        ("mic?gain=3", "unknown option 'gain' for a mic source"),
    ],
)
def test_bad_specs_raise_soundwatch_errors(arg, message):
    with pytest.raises(SoundwatchError, match=message.replace("?", r"\?")):
        parse_source_arg(arg)


def test_open_source_builds_each_kind(tmp_path):
    import soundfile

    path = tmp_path / "clip.wav"
    soundfile.write(path, np.zeros(1600, dtype=np.float32), 16000)
    assert isinstance(open_source("clip", f"file:{path}", pace="fast"), FileSource)
    pcm = open_source("p", "pcm:-?rate=8000&channels=2&format=f32le")
    assert isinstance(pcm, PcmSource)
    assert (pcm.native_rate, pcm.channels, pcm.describe()["format"]) == (8000, 2, "f32le")
    with pytest.raises(SoundwatchError, match="unknown pace"):
        open_source("clip", f"file:{path}", pace="slow")


def test_only_sources_that_can_be_slowed_wait_when_behind(tmp_path):
    """Pipes and pull-driven sources make the pipeline wait (nothing dropped); sources that
    run on the wall clock let it drop windows and count them."""
    import soundfile

    path = tmp_path / "clip.wav"
    soundfile.write(path, np.zeros(1600, dtype=np.float32), 16000)
    assert open_source("clip", f"file:{path}", pace="fast").waits_when_behind is True
    assert open_source("clip", f"file:{path}", pace="realtime").waits_when_behind is False
    assert open_source("p", "pcm:-").waits_when_behind is True
    assert open_source("p", "pcm:/tmp/some.fifo").waits_when_behind is True
    assert open_source("s", "synthetic").waits_when_behind is False
    assert open_source("s", "synthetic", pace="fast").waits_when_behind is True

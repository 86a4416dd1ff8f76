"""The soak benchmark's code, run for a few seconds: the real CLI run (model, events,
publishing) on a looping file paced fast and a synthetic stream, watched by a subscriber
in this process. The hour-long result is in docs/reliability.md."""

from __future__ import annotations

from conftest import shared_file

from benchmarks.soak import soak


def test_short_soak_loses_nothing_and_stops_cleanly() -> None:
    weights = shared_file("models/mn04_as_mAP_432.pt")
    speech = shared_file("audio/clips/speech.wav")
    result = soak(8.0, [speech], synthetic=1, weights=weights, warmup_s=3.0)
    assert result.returncode == 0, result.stderr_tail  # SIGTERM: a clean stop
    assert set(result.audio_s) == {"file0", "synth0"}
    assert all(seconds > 0 for seconds in result.audio_s.values())
    assert all(result.tags.get(stream, 0) > 0 for stream in result.audio_s)
    assert result.events > 0 and result.statuses > 0
    assert result.missed == 0 and result.malformed == 0  # seq contiguous on every topic
    assert result.losses == {} and result.errors == {}
    assert result.inference.get("inference_failures") == 0
    assert result.warm is not None and len(result.samples) >= 2
    _, threads, fds = result.growth
    assert threads <= 0 and fds <= 0, result.samples  # nothing leaks per window

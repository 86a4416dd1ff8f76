"""What activity gating costs in event quality, and how many windows it skips.

For every scene of scenes-dev (and the validation set B, when generated: see
``benchmarks/scenes.py``), the mn04 window probabilities come from the scenes cache; the
gate (``soundwatch.dsp.activity.ActivityGate``) is run over the same windows' log-mel,
as the pipeline runs it, and each carried window takes the previous window's
probabilities, as the pipeline delivers it. The shipped ESC-50 preset then detects
events (``detect_events_offline``: the live detector gives the same events), scored as
``benchmarks/events.py`` scores them (event F1, 1 s onset collar). Baseline: the same
windows without a gate. Also: the share of windows carried on the shared clips and on
steady low-level room noise (what most live streams hear).

    .venv/bin/python benchmarks/gating.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.pipeline import room_noise  # noqa: E402
from benchmarks.scenes import (  # noqa: E402
    SCENES_DEV,
    SET_B,
    WEIGHTS,
    WindowCache,
    read_truth,
    scenes_root,
)
from benchmarks.scoring import LabelledEvent, Score, score_events  # noqa: E402
from soundwatch.dsp import logmel  # noqa: E402
from soundwatch.dsp.activity import ActivityGate, GateSettings  # noqa: E402
from soundwatch.dsp.windows import MelWindower  # noqa: E402
from soundwatch.events import EventsConfig, build_settings, detect_events_offline  # noqa: E402
from soundwatch.models import InferenceWorker, load_model  # noqa: E402

CLIPS = REPO.parent / "shared" / "audio" / "clips"
SETTINGS = {
    "(3 dB, 2 dB)": GateSettings(level_db=3.0, spectrum_db=2.0),
    "(2 dB, 1.5 dB; the default until the lead-in)": GateSettings(level_db=2.0, spectrum_db=1.5),
    "default (2 dB, 1 dB)": GateSettings(),
    "loose (4 dB, 3 dB)": GateSettings(level_db=4.0, spectrum_db=3.0),
}


def carried_mask(wave: np.ndarray, settings: GateSettings) -> np.ndarray:
    """Which 3 s / 0.5 s windows of ``wave`` the gate carries (placed as the pipeline's)."""
    windower = MelWindower(300, 50)
    windows = windower.push(logmel(wave)) + windower.flush()
    gate = ActivityGate(settings)
    return np.array([gate.carry(w) for w in windows])


def carry(probs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = probs.copy()
    for i in np.flatnonzero(mask):
        out[i] = out[i - 1]  # the pipeline's carried result: the last delivered one
    return out


def score_scenes(directory: Path, cache: WindowCache, detector, gate: GateSettings | None):
    score, carried, total = Score({}), 0, 0
    for scene, truth in read_truth(directory).items():
        wav = directory / f"{scene}.wav"
        w = cache.get(wav, 3.0, 0.5)
        probs = w.probs
        if gate is not None:
            wave, rate = sf.read(wav, dtype="float32")
            assert rate == 32000
            mask = carried_mask(wave, gate)
            assert len(mask) == len(probs)
            probs = carry(probs, mask)
            carried += int(mask.sum())
        total += len(probs)
        events = detect_events_offline(w.starts, w.stops, probs, detector)
        score.add(score_events(truth, [LabelledEvent(e.label, e.onset, e.offset) for e in events]))
    return score, carried / total


def main() -> None:
    loaded = load_model("mn04", WEIGHTS, download=False)
    worker = InferenceWorker(loaded, device="cpu", threads=1)
    cache = WindowCache(worker, scenes_root() / "windows")
    detector = build_settings(EventsConfig(preset="esc50", groups={}), loaded.labels, loaded.mids)
    sets = {"scenes-dev": SCENES_DEV}
    if SET_B.directory(scenes_root()).is_dir():
        sets["B"] = SET_B.directory(scenes_root())
    print("| gate | set | event F1 | F1 change | precision | recall | windows carried |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, directory in sets.items():
        base, _ = score_scenes(directory, cache, detector, None)
        print(
            f"| none (baseline) | {name} | {base.micro.f1:.3f} | | "
            f"{base.micro.precision:.3f} | {base.micro.recall:.3f} | 0% |"
        )
        for label, gate in SETTINGS.items():
            score, share = score_scenes(directory, cache, detector, gate)
            print(
                f"| {label} | {name} | {score.micro.f1:.3f} | "
                f"{score.micro.f1 - base.micro.f1:+.3f} | {score.micro.precision:.3f} | "
                f"{score.micro.recall:.3f} | {share:.0%} |",
                flush=True,
            )
    print("\nwindows carried (3 s / 0.5 s), default gate:")
    for clip in sorted(CLIPS.glob("*.wav")):
        wave, rate = sf.read(clip, dtype="float32", always_2d=True)
        if rate != 32000:
            continue  # the pipeline resamples; the clips at 32 kHz suffice here
        mask = carried_mask(wave.mean(axis=1), GateSettings())
        print(f"- {clip.name}: {mask.mean():.0%} of {len(mask)}")
    mask = carried_mask(room_noise(), GateSettings())
    print(f"- synthetic room noise (-60 dBFS, +-1 dB drift): {mask.mean():.0%} of {len(mask)}")


if __name__ == "__main__":
    main()

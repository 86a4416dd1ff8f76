"""How much tag smoothing steadies what subscribers see, and what it costs in reaction time.

For each smoothing setting (the runtime's own ``TagSmoother``, applied window by window as
the live publisher does), on mn04 3 s / 0.5 s windows:

- **top-1 changes per minute** on the five clips of ``../shared/audio/clips`` and on the
  scenes (scenes-dev and generated set A): how often the label a dashboard shows first
  changes (raw windows flicker between near-equal classes);
- **reaction**: for every ground-truth sound in the scenes whose event group's raw score
  crosses the group's ``threshold_on`` while the sound plays, how much later the smoothed
  group score crosses it (median and 90th percentile, seconds), and the share of such
  sounds the smoothed score never lets cross within the sound plus 3 s.

    .venv/bin/python benchmarks/smoothing.py          # prints the table (about a minute)

Baseline: ``none`` (the raw window probabilities) in the same run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.scenes import (  # noqa: E402
    SCENES_DEV,
    SET_A,
    WEIGHTS,
    WindowCache,
    Windows,
    generate,
    read_truth,
    scenes_root,
    tag_windows,
)
from soundwatch.events import EventsConfig, build_settings  # noqa: E402
from soundwatch.events.groups import ScoreTable, group_scores  # noqa: E402
from soundwatch.models import InferenceWorker, load_model  # noqa: E402
from soundwatch.sinks.smoothing import TagSmoother  # noqa: E402
from soundwatch.stream import read_audio_file  # noqa: E402

WINDOW, HOP = 3.0, 0.5
SETTINGS = [
    ("none", 1.0),
    ("ema", 0.5),
    ("ema", 1.0),
    ("ema", 2.0),
    ("ema", 3.0),
    ("median", 1.5),
    ("median", 3.0),
]
CLIPS = REPO.parent / "shared" / "audio" / "clips"
LATE_S = 3.0  # a smoothed crossing this long after the sound ended counts as missed


def smoothed(probs: np.ndarray, method: str, width: float) -> np.ndarray:
    smoother = TagSmoother(method, width, HOP)
    return np.stack([smoother.push(p) for p in probs])


def top1_changes_per_minute(recordings: list[Windows], method: str, width: float) -> float:
    changes, minutes = 0, 0.0
    for windows in recordings:
        top = smoothed(windows.probs, method, width).argmax(axis=1)
        changes += int((top[1:] != top[:-1]).sum())
        minutes += (windows.stops[-1] - windows.starts[0]) / 100 / 60
    return changes / minutes


def reaction(
    scenes: list[tuple[Windows, list]], table: ScoreTable, names: list[str], on: np.ndarray
) -> tuple[list[float], int, int]:
    """Added delays of the smoothed crossings, and (missed, crossed) counts."""
    index = {name: i for i, name in enumerate(names)}
    delays: list[float] = []
    missed = crossed = 0
    for method_probs, windows, truth in scenes:
        t_end = windows.stops / 100
        raw_groups = group_scores(windows.probs, table)
        smooth_groups = group_scores(method_probs, table)
        for sound in truth:
            if sound.label not in index:
                continue
            g = index[sound.label]
            during = (t_end > sound.onset) & (t_end <= sound.offset + WINDOW)
            raw_hits = np.flatnonzero(during & (raw_groups[:, g] >= on[g]))
            if not len(raw_hits):
                continue
            crossed += 1
            late = (t_end > sound.onset) & (t_end <= sound.offset + WINDOW + LATE_S)
            smooth_hits = np.flatnonzero(late & (smooth_groups[:, g] >= on[g]))
            if not len(smooth_hits):
                missed += 1
                continue
            delays.append(float(t_end[smooth_hits[0]] - t_end[raw_hits[0]]))
    return delays, missed, crossed


def main() -> None:
    loaded = load_model("mn04", WEIGHTS, download=False)
    worker = InferenceWorker(loaded, device="cpu", threads=2)
    cache = WindowCache(worker, scenes_root() / "windows")
    clips = []
    for path in sorted(CLIPS.glob("*.wav")):
        wave, _ = read_audio_file(path)
        clips.append(tag_windows(wave, worker, WINDOW, HOP))
    scene_sets = [SCENES_DEV, generate(SET_A)]
    scenes = []
    for directory in scene_sets:
        for scene, truth in read_truth(directory).items():
            scenes.append((cache.get(directory / f"{scene}.wav", WINDOW, HOP), truth))
    settings = build_settings(EventsConfig(preset="esc50", groups={}), loaded.labels, loaded.mids)
    on = np.asarray(settings.thresholds.on)

    print(f"mn04, {WINDOW:g} s windows every {HOP:g} s; {len(clips)} clips, {len(scenes)} scenes")
    header = (
        "| smoothing | top-1 changes/min, clips | top-1 changes/min, scenes | vs none (scenes) "
        "| added reaction, median s | p90 s | sounds lost |"
    )
    print(header)
    print("|" + " --- |" * 7)
    base = None
    for method, width in SETTINGS:
        name = "none" if method == "none" else f"{method} {width:g} s"
        clip_rate = top1_changes_per_minute(clips, method, width)
        scene_rate = top1_changes_per_minute([w for w, _ in scenes], method, width)
        base = scene_rate if base is None else base
        with_probs = [(smoothed(w.probs, method, width), w, t) for w, t in scenes]
        delays, missed, crossed = reaction(with_probs, settings.score_table, settings.labels, on)
        print(
            f"| {name} | {clip_rate:.1f} | {scene_rate:.1f} | {scene_rate / base:.2f}x "
            f"| {np.median(delays):.2f} | {np.percentile(delays, 90):.2f} "
            f"| {missed}/{crossed} |"
        )


if __name__ == "__main__":
    main()

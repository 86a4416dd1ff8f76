"""Event detection quality on scenes-dev: soundwatch events vs the naive way, in one run.

For each of the 12 development scenes (60 s, ESC-50 sounds over noise, see
../shared/audio/README.md) the windows are tagged by mn04 exactly as the pipeline places
them (``MelWindower``: windows of W frames starting at multiples of H, plus the final tail
window), then:

- **naive**: per ESC-50 group, an event is a run of windows scoring above 0.3; onset = end
  of its first window minus 1 s, offset = end of its last window;
- **soundwatch**: :func:`soundwatch.events.detect_events_offline` with the ``esc50`` preset
  (per-group thresholds tuned on all of scenes-dev), which the streaming detector
  reproduces exactly;
- **soundwatch, leave-one-scene-out**: the per-group thresholds re-tuned on the other 11
  scenes for each scene (the honest held-out number), and with one global threshold.

Scores (``benchmarks/scoring.py``): event-based precision, recall and F1 with a 1 s
onset collar and an offset collar of max(1 s, 20% of the true event), micro-averaged over
categories (macro F1 too); onset-only F1; mean absolute onset error of matched events.

    .venv/bin/python benchmarks/events.py [--cache-dir DIR] [--write-preset]

``--cache-dir`` keeps window probabilities between runs (outside the repository);
``--write-preset`` tunes the per-group thresholds on all scenes and writes them into
``soundwatch/events/esc50_groups.yaml``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.scoring import Collars, LabelledEvent, Score, score_events  # noqa: E402
from soundwatch.dsp import logmel  # noqa: E402
from soundwatch.dsp.windows import FRAMES_PER_SECOND, MelWindower  # noqa: E402
from soundwatch.events import (  # noqa: E402
    DetectedEvent,
    EventsConfig,
    build_settings,
    detect_events_offline,
)
from soundwatch.events.agreement import aggregate_steps  # noqa: E402
from soundwatch.events.config import load_preset  # noqa: E402
from soundwatch.events.detector import DetectorSettings, EventDetector, _span_times  # noqa: E402
from soundwatch.events.groups import group_scores  # noqa: E402
from soundwatch.events.hysteresis import Thresholds, find_spans  # noqa: E402
from soundwatch.events.smoothing import smooth  # noqa: E402
from soundwatch.models import InferenceWorker, load_model  # noqa: E402
from soundwatch.results import WindowResult  # noqa: E402

SHARED = REPO.parent / "shared"
SCENES = SHARED / "audio" / "scenes-dev"
WEIGHTS = SHARED / "models" / "mn04_as_mAP_432.pt"
BATCH = 32
THRESHOLD_GRID = np.array(
    [
        *(0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.12, 0.15),
        *(0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8),
    ],
    dtype=np.float32,
)


@dataclass
class Windows:
    """One recording's tagged windows: frames ``[start, stop)`` and class probabilities."""

    starts: np.ndarray
    stops: np.ndarray
    probs: np.ndarray


def read_truth() -> dict[str, list[LabelledEvent]]:
    truth: dict[str, list[LabelledEvent]] = {}
    with open(SCENES / "ground_truth.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            event = LabelledEvent(
                row["esc50_category"], float(row["onset_s"]), float(row["offset_s"])
            )
            truth.setdefault(row["scene"], []).append(event)
    return dict(sorted(truth.items()))


def tag_windows(wave: np.ndarray, worker: InferenceWorker, window: float, hop: float) -> Windows:
    """Tag ``wave`` with windows placed as the pipeline's ``MelWindower`` places them."""
    mel = logmel(wave)
    windower = MelWindower(round(window * FRAMES_PER_SECOND), round(hop * FRAMES_PER_SECOND))
    windows = windower.push(mel) + windower.flush()
    probs = []
    by_length: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        by_length.setdefault(w.mel.shape[1], []).append(i)
    out = np.zeros((len(windows), worker.num_classes), dtype=np.float32)
    for indices in by_length.values():
        for lo in range(0, len(indices), BATCH):
            chunk = indices[lo : lo + BATCH]
            p, _ = worker.infer(np.stack([windows[i].mel for i in chunk]))
            out[chunk] = p
    probs.append(out)
    return Windows(np.array([w.start for w in windows]), np.array([w.stop for w in windows]), out)


class WindowCache:
    """Window probabilities per (scene, window, hop), computed once, optionally on disk."""

    def __init__(self, worker: InferenceWorker, cache_dir: Path | None) -> None:
        self.worker = worker
        self.cache_dir = cache_dir
        self.memory: dict[tuple[str, float, float], Windows] = {}
        self.seconds_tagging = 0.0
        self.key = hashlib.sha256(
            (worker.loaded.sha256 + Path(__file__).name).encode()
        ).hexdigest()[:12]

    def get(self, scene: str, window: float, hop: float) -> Windows:
        key = (scene, window, hop)
        if key in self.memory:
            return self.memory[key]
        path = None
        if self.cache_dir is not None:
            path = self.cache_dir / f"{scene}_w{window}_h{hop}_{self.key}.npz"
            if path.exists():
                z = np.load(path)
                self.memory[key] = Windows(z["starts"], z["stops"], z["probs"])
                return self.memory[key]
        wave, rate = sf.read(SCENES / f"{scene}.wav", dtype="float32")
        assert rate == 32000, rate
        started = time.perf_counter()
        windows = tag_windows(wave, self.worker, window, hop)
        self.seconds_tagging += time.perf_counter() - started
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, starts=windows.starts, stops=windows.stops, probs=windows.probs)
        self.memory[key] = windows
        return windows


# --- the naive way ----------------------------------------------------------------------
def naive_events(
    w: Windows, settings: DetectorSettings, threshold: float = 0.3
) -> list[LabelledEvent]:
    """Runs of windows above ``threshold``: onset = end of the first window - 1 s."""
    scores = group_scores(w.probs, settings.members)
    events = []
    for g, group in enumerate(settings.groups):
        above = np.concatenate([[0], (scores[:, g] > threshold).astype(np.int8), [0]])
        edges = np.diff(above)
        for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
            onset = w.stops[a] / FRAMES_PER_SECOND - 1.0
            offset = w.stops[b - 1] / FRAMES_PER_SECOND
            events.append(LabelledEvent(group.name, max(0.0, onset), offset))
    return events


# --- scoring helpers --------------------------------------------------------------------
@dataclass
class Result:
    name: str
    windows: str
    event: Score
    onset: Score


def evaluate(
    name: str,
    windows: str,
    truth: dict[str, list[LabelledEvent]],
    detect: Callable[[str], Sequence[LabelledEvent]],
) -> Result:
    event, onset = Score({}), Score({})
    for scene, true_events in truth.items():
        detected = list(detect(scene))
        event.add(score_events(true_events, detected, Collars()))
        onset.add(score_events(true_events, detected, Collars(onset_only=True)))
    return Result(name, windows, event, onset)


def as_labelled(events: Sequence[DetectedEvent]) -> list[LabelledEvent]:
    return [LabelledEvent(e.label, e.onset, e.offset) for e in events]


# --- per-group threshold tuning -------------------------------------------------------------
def smoothed_steps(w: Windows, settings: DetectorSettings) -> np.ndarray:
    scores = group_scores(w.probs, settings.members)
    steps, _ = aggregate_steps(w.starts, w.stops, scores, settings.step_frames, settings.quantile)
    return smooth(steps, settings.smoothing, settings.smoothing_width_s, settings.step_s)


def count_table(
    steps: dict[str, np.ndarray], truth: dict[str, list[LabelledEvent]], settings: DetectorSettings
) -> np.ndarray:
    """``[G, thresholds, scenes, 3]`` event tp/fp/fn of each group at each grid threshold."""
    n_groups = len(settings.groups)
    table = np.zeros((n_groups, len(THRESHOLD_GRID), len(truth), 3), dtype=np.int64)
    base = settings.thresholds
    off_ratio = base.off / base.on
    for t, on in enumerate(THRESHOLD_GRID):
        thresholds = Thresholds(
            on=np.full(n_groups, on, np.float32),
            off=(on * off_ratio).astype(np.float32),
            min_steps=base.min_steps,
            max_gap_steps=base.max_gap_steps,
        )
        for s, (scene, true_events) in enumerate(truth.items()):
            detected = []
            for span in find_spans(steps[scene], thresholds):
                onset, offset = _span_times(settings, span.start, span.end)
                detected.append(LabelledEvent(settings.groups[span.group].name, onset, offset))
            score = score_events(true_events, detected, Collars())
            for g, group in enumerate(settings.groups):
                c = score.per_label.get(group.name)
                if c is not None:
                    table[g, t, s] = (c.tp, c.fp, c.fn)
    return table


def tune_thresholds(table: np.ndarray, scenes: Sequence[int]) -> np.ndarray:
    """Per-group grid index maximising micro F1 over ``scenes``.

    Groups without a true event in ``scenes`` get the best single threshold for all groups
    (their counts cannot tell a threshold of their own). The micro F1 ratio is maximised by
    Dinkelbach iterations: each group independently maximises ``2 tp - F (2 tp + fp + fn)``.
    """
    sums = table[:, :, list(scenes)].sum(axis=2)  # [G, T, 3]
    totals = sums.sum(axis=0)
    f1_global = 2 * totals[:, 0] / np.maximum(2 * totals[:, 0] + totals[:, 1] + totals[:, 2], 1)
    global_index = int(np.argmax(f1_global))
    has_truth = (sums[:, 0, 0] + sums[:, 0, 2]) > 0
    f1 = 0.5
    index = np.full(len(table), global_index)
    for _ in range(10):
        objective = 2 * sums[:, :, 0] - f1 * (2 * sums[:, :, 0] + sums[:, :, 1] + sums[:, :, 2])
        index = np.where(has_truth, objective.argmax(axis=1), global_index)
        tp, fp, fn = sums[np.arange(len(table)), index].sum(axis=0)
        new_f1 = 2 * tp / max(2 * tp + fp + fn, 1)
        if abs(new_f1 - f1) < 1e-9:
            break
        f1 = new_f1
    return index


def with_thresholds(settings: DetectorSettings, on: np.ndarray) -> DetectorSettings:
    base = settings.thresholds
    off_ratio = base.off / base.on
    thresholds = Thresholds(
        on=on.astype(np.float32),
        off=(on * off_ratio).astype(np.float32),
        min_steps=base.min_steps,
        max_gap_steps=base.max_gap_steps,
    )
    return dataclasses.replace(settings, thresholds=thresholds)


# --- report ------------------------------------------------------------------------------
def row(result: Result) -> str:
    e, o = result.event.micro, result.onset.micro
    err = e.mean_onset_error
    return (
        f"| {result.name} | {result.windows} | {e.f1:.3f} | {e.precision:.3f} | {e.recall:.3f} "
        f"| {result.event.macro_f1:.3f} | {o.f1:.3f} | {err:.2f} | {e.tp}/{e.tp + e.fn} "
        f"| {e.tp + e.fp} |"
    )


HEADER = (
    "| method | windows | F1 | precision | recall | macro F1 | onset-only F1 "
    "| onset error (s) | matched | detected |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def as_results(scene: str, w: Windows) -> list[WindowResult]:
    """The windows as the pipeline delivers them (stream clock starting at 0)."""
    last = len(w.starts) - 1
    return [
        WindowResult(
            stream=scene,
            start_frame=int(a),
            stop_frame=int(b),
            t_start=a / FRAMES_PER_SECOND,
            t_end=b / FRAMES_PER_SECOND,
            offset_s=a / FRAMES_PER_SECOND,
            probs=p,
            embedding=np.zeros(0, np.float32),
            t_ingest=0.0,
            final=i == last,
        )
        for i, (a, b, p) in enumerate(zip(w.starts, w.stops, w.probs, strict=True))
    ]


def speed_rows(windows: dict[str, Windows], configs: dict[str, DetectorSettings]) -> list[str]:
    """Detector cost per window: offline vs streaming, median of 5 runs over all scenes."""
    results = {scene: as_results(scene, w) for scene, w in windows.items()}
    n_windows = sum(len(r) for r in results.values())
    rows = []
    for name, settings in configs.items():
        offline, streaming = [], []
        for _ in range(5):
            started = time.perf_counter()
            for w in windows.values():
                detect_events_offline(w.starts, w.stops, w.probs, settings)
            offline.append(time.perf_counter() - started)
            started = time.perf_counter()
            for scene, scene_results in results.items():
                detector = EventDetector(settings, scene)
                for result in scene_results:
                    detector.push(result)
                detector.finish()
            streaming.append(time.perf_counter() - started)
        off_us = statistics.median(offline) / n_windows * 1e6
        on_us = statistics.median(streaming) / n_windows * 1e6
        ratio = on_us / off_us
        rows.append(
            f"| {name} | {len(settings.groups)} | {off_us:.0f} | {on_us:.0f} | {ratio:.2f} |"
        )
    return rows


SPEED_HEADER = (
    "| groups | count | offline (µs/window) | streaming (µs/window) | streaming / offline |\n"
    "|---|---|---|---|---|"
)


PRESET_FILE = REPO / "soundwatch" / "events" / "esc50_groups.yaml"
PRESET_HEADER = """\
# The 50 ESC-50 categories as soundwatch event groups: each the AudioSet classes (by display
# name) that mean the same sound. threshold_on: tuned for mn04 with 3 s windows every 0.5 s
# on scenes-dev by `benchmarks/events.py --write-preset` (groups with no sound in scenes-dev
# keep the default events.threshold_on). Use with `events: {preset: esc50}`.
groups:
"""


def write_preset(thresholds: dict[str, float | None]) -> None:
    """Rewrite the esc50 preset with tuned ``threshold_on`` values (None: the default)."""
    lines = [PRESET_HEADER.rstrip("\n")]
    for name, spec in load_preset("esc50").items():
        labels = ", ".join(f'"{label}"' if "," in label else label for label in spec.labels)
        extra = f", threshold_on: {thresholds[name]:g}" if thresholds[name] is not None else ""
        lines.append(f"  {name}: {{labels: [{labels}]{extra}}}")
    PRESET_FILE.write_text("\n".join(lines) + "\n", encoding="utf-8")


def global_index(table: np.ndarray, scenes: Sequence[int]) -> int:
    """The grid threshold with the best micro F1 when every group uses it."""
    totals = table[:, :, list(scenes)].sum(axis=(0, 2))
    f1 = 2 * totals[:, 0] / np.maximum(2 * totals[:, 0] + totals[:, 1] + totals[:, 2], 1)
    return int(np.argmax(f1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=None, help="keep window probabilities")
    parser.add_argument(
        "--write-preset",
        action="store_true",
        help="tune per-group thresholds on all scenes and write them into the esc50 preset",
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    loaded = load_model("mn04", WEIGHTS, download=False)
    worker = InferenceWorker(loaded, device="cpu", threads=args.threads)
    cache = WindowCache(worker, args.cache_dir)
    truth = read_truth()
    scenes = list(truth)

    config = EventsConfig(preset="esc50", groups={})  # exactly the ESC-50 categories
    settings = build_settings(config, loaded.labels, loaded.mids)
    ours = f"{config.window:g} s / {config.hop:g} s"
    layouts = [(10.0, 1.0), (2.0, 0.5), (config.window, config.hop)]
    windows = {(scene, w, h): cache.get(scene, w, h) for scene in scenes for (w, h) in layouts}

    def ours_of(scene: str) -> Windows:
        return windows[(scene, config.window, config.hop)]

    def detect(scene: str, s: DetectorSettings) -> list[LabelledEvent]:
        w = ours_of(scene)
        return as_labelled(detect_events_offline(w.starts, w.stops, w.probs, s))

    results = [
        evaluate(
            "naive (runs of windows > 0.3)",
            f"{w:g} s / {h:g} s",
            truth,
            lambda scene, w=w, h=h: naive_events(windows[(scene, w, h)], settings),
        )
        for (w, h) in layouts[:2]
    ]
    started = time.perf_counter()
    results.append(
        evaluate("soundwatch (esc50 preset)", ours, truth, lambda scene: detect(scene, settings))
    )
    detect_seconds = time.perf_counter() - started

    # Held out: per-group thresholds re-tuned on the other 11 scenes, for each scene.
    steps = {scene: smoothed_steps(ours_of(scene), settings) for scene in scenes}
    table = count_table(steps, truth, settings)
    per_group, one_global = (Score({}), Score({})), (Score({}), Score({}))
    for s, scene in enumerate(scenes):
        others = [i for i in range(len(scenes)) if i != s]
        candidates = (
            (per_group, THRESHOLD_GRID[tune_thresholds(table, others)]),
            (
                one_global,
                np.full(len(settings.groups), THRESHOLD_GRID[global_index(table, others)]),
            ),
        )
        for (event, onset), on in candidates:
            detected = detect(scene, with_thresholds(settings, on))
            event.add(score_events(truth[scene], detected, Collars()))
            onset.add(score_events(truth[scene], detected, Collars(onset_only=True)))
    results.append(
        Result("soundwatch, leave-one-scene-out, per-group thresholds", ours, *per_group)
    )
    results.append(Result("soundwatch, leave-one-scene-out, one threshold", ours, *one_global))

    n_events = sum(len(v) for v in truth.values())
    print(f"scenes-dev: {len(scenes)} scenes, {n_events} events; model mn04; micro averages")
    print("over categories except 'macro F1' (mean of per-category F1)\n")
    print(HEADER)
    for result in results:
        print(row(result))
    print(
        f"\ntagging all windows: {cache.seconds_tagging:.1f} s (0 when cached); soundwatch "
        f"detection over the {len(scenes)} scenes: {detect_seconds * 1000:.0f} ms"
    )

    every_class = build_settings(EventsConfig(preset=None, groups={}), loaded.labels, loaded.mids)
    speed = speed_rows(
        {scene: ours_of(scene) for scene in scenes},
        {"esc50 preset": settings, "every class (no groups)": every_class},
    )
    print(f"\ndetector cost ({config.window:g} s / {config.hop:g} s windows, median of 5 runs)\n")
    print(SPEED_HEADER)
    print("\n".join(speed))

    if args.write_preset:
        everything = range(len(scenes))
        index = tune_thresholds(table, everything)
        has_truth = table[:, 0, :, 0].sum(axis=1) + table[:, 0, :, 2].sum(axis=1) > 0
        best_global = float(THRESHOLD_GRID[global_index(table, everything)])
        write_preset(
            {
                g.name: float(THRESHOLD_GRID[index[i]]) if has_truth[i] else None
                for i, g in enumerate(settings.groups)
            }
        )
        print(f"\nwrote {PRESET_FILE} ({int(has_truth.sum())} groups tuned)")
        if abs(best_global - config.threshold_on) > 1e-6:
            print(
                f"note: the best single threshold is {best_global:g}, the default "
                f"events.threshold_on is {config.threshold_on:g}"
            )


if __name__ == "__main__":
    main()

"""Custom sounds: few-shot heads and fine-tuning against the zero-shot AudioSet mapping.

In one run, on ``../shared/audio/esc50-dev`` (50 categories x 2 clips, mn04, CPU):

1. k-shot clip accuracy, k = 1, cross-validated both ways: 50 labels learned from the first
   clip of every category classify the second clips, and the other way round. Every test
   clip is cut into the pipeline's windows (3 s every 0.5 s) once; each method scores every
   window per category and a clip's category is the argmax of its pooled scores: the mean
   over all windows, or over the *active* windows (within ``ACTIVE_DB`` of the clip's
   loudest; ESC-50 clips are padded with silence). Methods: the zero-shot mapping (each
   category's AudioSet classes from ``esc50_to_audioset.csv``, max over them); the head
   ``soundwatch learn`` fits (defaults: 3 augmented copies, no negatives besides the other
   categories); SimpleShot prototypes (centred, L2-normalised, nearest class mean by
   cosine) on the embedding and on sqrt(AudioSet probabilities) of the same augmented
   training windows; the mean of the head and the sqrt-probs prototype. Each is compared
   with zero-shot on the same windows and pooling: 95% Wilson intervals, the paired
   difference with a bootstrap interval and the clips only one of the two gets. The
   earlier baseline (zero-shot on one window of the whole 5 s clip) is printed too.
   ``--seeds N`` repeats the heads with N augmentation seeds (the seed alone moves them by
   a few points).
2. The same protocol for mn04 fine-tuned (``soundwatch finetune``: last blocks + head).
3. Event F1 on the generated scene sets of ``benchmarks/scenes.py`` (A: first clips, B:
   second): heads learned from the *other* set's clips (clips outside the scenes), events
   from the heads' calibrated thresholds, against the esc50 preset (zero-shot, tuned
   thresholds) on the same scenes.
4. Cost: a head's share of one window's cost (batch of 1, median of 200; and in batches of
   32), and the time to learn a 50-label head from the 100 clips.

    .venv/bin/python benchmarks/custom.py [--skip-finetune] [--skip-events] [--seeds N]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from soundwatch.dsp.windows import FRAMES_PER_SECOND  # noqa: E402
from soundwatch.heads.embeddings import read_wave, wave_outputs  # noqa: E402
from soundwatch.heads.fileformat import head_features  # noqa: E402
from soundwatch.heads.learn import (  # noqa: E402
    Backend,
    LearnSettings,
    build_training_set,
    head_from_training_set,
    learn_head,
)
from soundwatch.models import InferenceWorker, load_model  # noqa: E402

SHARED = REPO.parent / "shared"
ESC50 = SHARED / "audio" / "esc50-dev"
WEIGHTS = SHARED / "models" / "mn04_as_mAP_432.pt"
Z95 = 1.959964
FRAME = 32000 // FRAMES_PER_SECOND  # samples per mel frame
ACTIVE_DB = 10.0  # "active" windows: within this many dB of the clip's loudest window
POOLS = ("mean", "active")


def wilson(correct: int, n: int) -> tuple[float, float]:
    p = correct / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return centre - half, centre + half


def esc50_clips() -> tuple[list[str], dict[str, list[Path]], dict[str, list[int]]]:
    """Categories, their two clips sorted by file name (first, second), AudioSet indices."""
    clips: dict[str, list[Path]] = {}
    with open(ESC50 / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            clips.setdefault(row["category"], []).append(ESC50 / "audio" / row["filename"])
    mapping: dict[str, list[int]] = {}
    with open(ESC50 / "esc50_to_audioset.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            mapping[row["category"]] = [int(i) for i in row["audioset_indices"].split(";")]
    categories = sorted(clips)
    return categories, {c: sorted(clips[c]) for c in categories}, mapping


def accuracy_row(name: str, correct: np.ndarray, baseline: np.ndarray | None = None) -> str:
    """A table row: accuracy, Wilson interval, clips; against ``baseline`` (same clips) the
    paired difference with its bootstrap interval and the clips only one of them gets."""
    lo, hi = wilson(int(correct.sum()), len(correct))
    row = f"| {name} | {correct.mean():.3f} | [{lo:.3f}, {hi:.3f}] | {len(correct)} |"
    if baseline is None:
        return row + " |"
    diff = correct.astype(float) - baseline.astype(float)
    rng = np.random.default_rng(0)
    means = diff[rng.integers(0, len(diff), (10000, len(diff)))].mean(axis=1)
    d_lo, d_hi = np.quantile(means, [0.025, 0.975])
    wins, losses = int((correct & ~baseline).sum()), int((baseline & ~correct).sum())
    return row + f" {diff.mean():+.3f} [{d_lo:+.3f}, {d_hi:+.3f}] ({wins} / {losses}) |"


@dataclass
class TestClip:
    """A test clip's windows as the pipeline cuts them: outputs and each window's level."""

    category: str
    probs: np.ndarray  # [W, C]
    embeddings: np.ndarray  # [W, D]
    level_db: np.ndarray  # [W]


def test_clips(worker, categories, clips, window_s, hop_s) -> dict[int, list[TestClip]]:
    """Per side (0: first clips, 1: second), each category's clip cut into windows."""
    out: dict[int, list[TestClip]] = {0: [], 1: []}
    for side in (0, 1):
        for c in categories:
            wave = read_wave(clips[c][side])
            o = wave_outputs(
                wave, worker.infer, worker.num_classes, worker.embedding_dim, window_s, hop_s
            )
            level = [
                10
                * np.log10(
                    np.mean(np.square(wave[a * FRAME : max(b * FRAME, a * FRAME + 1)])) + 1e-10
                )
                for a, b in zip(o.starts, o.stops, strict=True)
            ]
            out[side].append(TestClip(c, o.probs, o.embeddings, np.array(level)))
    return out


def pool(scores: np.ndarray, clip: TestClip, how: str) -> np.ndarray:
    """A clip's score per category from its windows' ``scores`` [W, K]: the mean over all
    windows, or over the active ones (within ACTIVE_DB of the clip's loudest window: ESC-50
    clips are padded with silence)."""
    if how == "active":
        scores = scores[clip.level_db >= clip.level_db.max() - ACTIVE_DB]
    return scores.mean(axis=0)


def zero_shot_whole(worker, categories, clips, mapping) -> np.ndarray:
    """The earlier baseline: one window of the whole (5 s) clip, first clips then second."""
    correct = []
    for side in (0, 1):
        for c in categories:
            wave = read_wave(clips[c][side])
            length = len(wave) / 32000
            out = wave_outputs(
                wave, worker.infer, worker.num_classes, worker.embedding_dim, length, length
            )
            scores = [out.probs[0, mapping[k]].max() for k in categories]
            correct.append(categories[int(np.argmax(scores))] == c)
    return np.array(correct)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def prototypes(features: np.ndarray, label: np.ndarray, labels: int):
    """SimpleShot: centre by the mean of all support windows, L2-normalise, one centroid per
    label; windows are scored by cosine with each centroid, mapped to [0, 1]."""
    centre = features.mean(axis=0)
    x = unit(features - centre)
    centroids = unit(np.stack([x[label == k].mean(axis=0) for k in range(labels)]))
    return lambda f: (unit(f - centre) @ centroids.T + 1) / 2


def kshot(backend, clips, tests, categories, mapping, settings) -> dict[str, np.ndarray]:
    """Correctness per test clip (first clips, then second) for each method and pooling:
    zero-shot on the same windows, the ``learn`` head, prototypes, head + prototype."""
    dim = backend.embedding_dim
    methods = ("zero-shot", "head", "prototype embedding", "prototype sqrt-probs")
    methods += ("head + prototype sqrt-probs",)
    correct: dict[str, list] = {f"{m} / {p}": [[], []] for m in methods for p in POOLS}
    for train_side in (1, 0):  # learned on the second clips, tested on the first
        test_side = 1 - train_side
        examples = {c.replace("-", "_"): [clips[c][train_side]] for c in categories}
        labels = list(examples)
        data = build_training_set(examples, [], backend, settings)
        head, _ = head_from_training_set("esc50", examples, [], data, backend, settings)
        proto_e = prototypes(data.features[:, :dim], data.label, len(labels))
        proto_p = prototypes(data.features[:, dim:], data.label, len(labels))
        for k, clip in enumerate(tests[test_side]):
            feats = head_features(clip.embeddings, clip.probs, head.inputs)
            window_scores = {
                "zero-shot": np.stack([clip.probs[:, mapping[c]].max(1) for c in categories], 1),
                "head": head.apply(feats),
                "prototype embedding": proto_e(clip.embeddings),
                "prototype sqrt-probs": proto_p(feats[:, dim:]),
            }
            window_scores["head + prototype sqrt-probs"] = (
                window_scores["head"] + window_scores["prototype sqrt-probs"]
            ) / 2
            for method, scores in window_scores.items():
                for how in POOLS:
                    hit = int(np.argmax(pool(scores, clip, how))) == k
                    correct[f"{method} / {how}"][test_side].append(hit)
    return {name: np.array(sides[0] + sides[1]) for name, sides in correct.items()}


def finetuned_kshot(categories, clips, epochs: int) -> tuple[np.ndarray, list[float]]:
    from soundwatch.training.finetune import FinetuneSettings, finetune

    correct, seconds = [None, None], []
    for train_side in (1, 0):
        test_side = 1 - train_side
        loaded = load_model("mn04", WEIGHTS, download=False)
        items = [(clips[c][train_side], c.replace("-", "_")) for c in categories]
        started = time.perf_counter()
        model, head = finetune(loaded, items, FinetuneSettings(epochs=epochs), torch.device("cpu"))
        seconds.append(time.perf_counter() - started)
        loaded.model = model
        worker = InferenceWorker(loaded, device="cpu", threads=2, backend="torch")
        side = []
        for c in categories:
            out = wave_outputs(
                read_wave(clips[c][test_side]),
                worker.infer,
                worker.num_classes,
                worker.embedding_dim,
                3.0,
                0.5,
            )
            probs = head.predict(out.embeddings, out.probs).mean(axis=0)
            side.append(head.labels[int(np.argmax(probs))] == c.replace("-", "_"))
        correct[test_side] = side
    return np.array(correct[0] + correct[1]), seconds


def room_recordings(directory: Path) -> list[Path]:
    """What a user would give as ``--negatives``: 30 s each of pink and brown noise at the
    scenes' noise floor (-45 dBFS RMS; the scenes' rain / wind / crickets loops are ESC-50
    categories the heads learn, so they are not used)."""
    import soundfile as sf

    from soundwatch.heads import augment

    rng = np.random.default_rng(7)
    paths = []
    for name, exponent in (("pink", 1.0), ("brown", 2.0)):
        noise = augment.coloured_noise(rng, 30.0, exponent)
        noise *= np.float32(10 ** (-45 / 20) / augment.rms(noise))
        paths.append(directory / f"room-{name}.wav")
        sf.write(paths[-1], noise, augment.SAMPLE_RATE)
    return paths


def event_f1(backend, worker, categories, clips, settings) -> list[str]:
    """Heads learned from the other scene set's clips (without negatives, and with the
    room's noise as negatives) vs the esc50 preset, per scene set."""
    import tempfile

    from benchmarks.scenes import SET_A, SET_B, WindowCache, generate, read_truth, scenes_root
    from benchmarks.scoring import LabelledEvent, score_events
    from soundwatch.events import EventsConfig, build_settings
    from soundwatch.events.config import GroupConfig
    from soundwatch.events.detector import DetectorSettings, detect_events_offline
    from soundwatch.events.groups import Group

    loaded = worker.loaded
    preset = build_settings(EventsConfig(), loaded.labels, loaded.mids)
    cache = WindowCache(worker, scenes_root() / "windows")
    rows = []
    room = room_recordings(Path(tempfile.mkdtemp(prefix="soundwatch-room-")))
    for scene_set, train_side in ((SET_A, 1), (SET_B, 0)):
        directory = generate(scene_set)
        truth = read_truth(directory)
        examples = {f"h_{c}": [clips[c][train_side]] for c in categories}
        heads = {
            "head": learn_head("esc50", examples, [], backend, settings)[0],
            "head, room noise as --negatives": learn_head(
                "esc50", examples, room, backend, settings
            )[0],
        }
        detectors = {}
        for method, head in heads.items():
            config = EventsConfig().model_copy(
                update={
                    "preset": None,
                    "groups": {
                        label: GroupConfig(labels=[label], threshold_on=float(t))
                        for label, t in zip(head.labels, head.thresholds, strict=True)
                    },
                }
            )
            detectors[method] = DetectorSettings.from_config(
                config, [Group(label, (i,)) for i, label in enumerate(head.labels)]
            )
        scores = dict.fromkeys(["preset", *heads])
        for scene, events in truth.items():
            w = cache.get(directory / f"{scene}.wav", 3.0, 0.5)
            found = {"preset": detect_events_offline(w.starts, w.stops, w.probs, preset)}
            for method, head in heads.items():
                found[method] = detect_events_offline(
                    w.starts, w.stops, head.predict(w.embeddings, w.probs), detectors[method]
                )
            for method, detected in found.items():
                labelled = [
                    LabelledEvent(e.label.removeprefix("h_"), e.onset, e.offset) for e in detected
                ]
                score = score_events(events, labelled)
                if scores[method] is None:
                    scores[method] = score
                else:
                    scores[method].add(score)
        for method, score in scores.items():
            micro = score.micro
            rows.append(
                f"| {scene_set.name} ({len(truth)} scenes) | {method} | {micro.f1:.3f} | "
                f"{micro.precision:.3f} | {micro.recall:.3f} |"
            )
    return rows


def costs(backend, worker, categories, clips, settings) -> list[str]:
    examples = {c.replace("-", "_"): clips[c] for c in categories}
    started = time.perf_counter()
    head, report = learn_head("esc50", examples, [], backend, settings)
    learn_s = time.perf_counter() - started
    window = np.random.default_rng(0).standard_normal((1, 128, 300)).astype(np.float32)
    worker.infer(window)
    probs, embedding = worker.infer(window)
    infer_times, head_times = [], []
    for _ in range(200):
        t0 = time.perf_counter()
        worker.infer(window)
        t1 = time.perf_counter()
        head.predict(embedding[0], probs[0])
        t2 = time.perf_counter()
        infer_times.append(t1 - t0)
        head_times.append(t2 - t1)
    infer_ms, head_ms = np.median(infer_times) * 1e3, np.median(head_times) * 1e3
    # At load the pipeline runs batches and the delivery thread applies the heads to the
    # batch's windows one after the other (HeadsHandler.on_result): per window, both sides.
    batch = np.repeat(window, 32, axis=0)
    batch_probs, batch_embeddings = worker.infer(batch)
    batch_infer, batch_head = [], []
    for _ in range(20):
        t0 = time.perf_counter()
        worker.infer(batch)
        t1 = time.perf_counter()
        for p, e in zip(batch_probs, batch_embeddings, strict=True):
            head.predict(e, p)
        t2 = time.perf_counter()
        batch_infer.append((t1 - t0) / 32)
        batch_head.append((t2 - t1) / 32)
    b_infer_ms, b_head_ms = np.median(batch_infer) * 1e3, np.median(batch_head) * 1e3
    return [
        f"| learn a 50-label head from 100 clips | {learn_s:.1f} s "
        f"({report.seconds['audio_and_embedding']:.1f} s audio and embedding, "
        f"{report.seconds['fitting']:.1f} s fitting) | < 60 s |",
        f"| one window (3 s, batch 1): mn04 / 50-label head | {infer_ms:.2f} ms / "
        f"{head_ms:.3f} ms = {100 * head_ms / infer_ms:.2f}% | < 1% |",
        f"| per window in batches of 32, head applied window by window: mn04 / 50-label "
        f"head | {b_infer_ms:.2f} ms / {b_head_ms:.3f} ms = "
        f"{100 * b_head_ms / b_infer_ms:.2f}% | < 1% |",
    ]


def print_kshot(args, worker, backend, settings, categories, clips, mapping) -> None:
    """Section 1 (and 2 unless --skip-finetune): the k-shot table."""
    print("## k-shot clip accuracy on ESC-50 dev (50 categories, k = 1, both ways)\n")
    print(
        "Against: zero-shot on the same windows and pooling; difference with its paired "
        "bootstrap 95% interval (clips only this method / only zero-shot gets right).\n"
    )
    print("| method / pooling | accuracy | 95% CI | clips | vs zero-shot |\n|---|---|---|---|---|")
    whole = zero_shot_whole(worker, categories, clips, mapping)
    print(accuracy_row("zero-shot AudioSet mapping, one window of the whole clip", whole))
    tests = test_clips(worker, categories, clips, settings.window_s, settings.hop_s)
    learn_s = []
    for seed in range(args.seeds):
        started = time.perf_counter()
        seeded = dataclasses.replace(settings, seed=seed)
        results = kshot(backend, clips, tests, categories, mapping, seeded)
        learn_s.append(time.perf_counter() - started)
        for name, correct in results.items():
            if name.startswith("zero-shot") and seed > 0:
                continue
            how = name.rsplit(" / ", 1)[1]
            baseline = None if name.startswith("zero-shot") else results[f"zero-shot / {how}"]
            label = f"{name} (seed {seed})" if args.seeds > 1 else name
            print(accuracy_row(f"{label}", correct, baseline))
    if not args.skip_finetune:
        tuned, tune_s = finetuned_kshot(categories, clips, args.epochs)
        name = f"fine-tuned mn04 ({args.epochs} epochs, last blocks) / mean"
        print(accuracy_row(name, tuned, results["zero-shot / mean"]))
    print(
        f"\nembedding, learning and scoring (both ways): {', '.join(f'{t:.0f} s' for t in learn_s)}"
    )
    if not args.skip_finetune:
        print(f"fine-tuning each side: {', '.join(f'{s:.0f} s' for s in tune_s)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-finetune", action="store_true")
    parser.add_argument("--skip-events", action="store_true")
    parser.add_argument("--skip-kshot", action="store_true")
    parser.add_argument("--skip-costs", action="store_true")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument(
        "--seeds", type=int, default=1, help="augmentation seeds of the k-shot heads (rows each)"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    loaded = load_model("mn04", WEIGHTS, download=False)
    worker = InferenceWorker(loaded, device="cpu", threads=2, backend="torch")
    backend = Backend(
        worker.infer, loaded.name, loaded.sha256, worker.num_classes, worker.embedding_dim
    )
    settings = LearnSettings()
    categories, clips, mapping = esc50_clips()

    if not args.skip_kshot:
        print_kshot(args, worker, backend, settings, categories, clips, mapping)
    if not args.skip_events:
        print("\n## Event F1 on generated scenes (heads from clips outside the scenes)\n")
        print("| scenes | method | F1 | precision | recall |\n|---|---|---|---|---|")
        for row in event_f1(backend, worker, categories, clips, settings):
            print(row)
    if not args.skip_costs:
        print("\n## Cost\n\n| what | measured | target |\n|---|---|---|")
        for row in costs(backend, worker, categories, clips, settings):
            print(row)


if __name__ == "__main__":
    main()

"""Custom sounds: few-shot heads and fine-tuning against the zero-shot AudioSet mapping.

In one run, on ``../shared/audio/esc50-dev`` (50 categories x 2 clips, mn04, CPU):

1. k-shot clip accuracy, k = 1, cross-validated both ways: a 50-label head learned from the
   first clip of every category (``soundwatch learn`` defaults: 3 s windows, 3 augmented
   copies, no negatives besides the other categories) classifies the second clips (mean
   head probability over the clip's windows, argmax), and the other way round. Baseline,
   same clips, same run: the zero-shot mapping (each category's AudioSet classes from
   ``esc50_to_audioset.csv``, max over them, one window of the whole clip). 95% Wilson
   intervals; the paired difference with a sign-test count.
2. The same protocol for mn04 fine-tuned (``soundwatch finetune``: last blocks + head).
3. Event F1 on the generated scene sets of ``benchmarks/scenes.py`` (A: first clips, B:
   second): heads learned from the *other* set's clips (clips outside the scenes), events
   from the heads' calibrated thresholds, against the esc50 preset (zero-shot, tuned
   thresholds) on the same scenes.
4. Cost: a head's share of one window's cost (batch of 1, median of 200), and the time to
   learn a 50-label head from the 100 clips (reading, augmenting, embedding, fitting).

    .venv/bin/python benchmarks/custom.py [--skip-finetune] [--skip-events]
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from soundwatch.heads.embeddings import read_wave, wave_outputs  # noqa: E402
from soundwatch.heads.learn import Backend, LearnSettings, learn_head  # noqa: E402
from soundwatch.models import InferenceWorker, load_model  # noqa: E402

SHARED = REPO.parent / "shared"
ESC50 = SHARED / "audio" / "esc50-dev"
WEIGHTS = SHARED / "models" / "mn04_as_mAP_432.pt"
Z95 = 1.959964


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


def accuracy_row(name: str, correct: np.ndarray) -> str:
    lo, hi = wilson(int(correct.sum()), len(correct))
    return f"| {name} | {correct.mean():.3f} | [{lo:.3f}, {hi:.3f}] | {len(correct)} |"


def zero_shot(worker, categories, clips, mapping) -> np.ndarray:
    """Correct (1) or not per test clip (first clips then second), whole-clip window."""
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


def head_kshot(backend, worker, categories, clips, settings) -> tuple[np.ndarray, list[float]]:
    """Learn on one side, test on the other, both ways; correctness per test clip."""
    correct, seconds = [None, None], []
    for train_side in (1, 0):  # the head learned on second clips is tested on first clips
        test_side = 1 - train_side
        label_of = {c: c.replace("-", "_") for c in categories}
        examples = {label_of[c]: [clips[c][train_side]] for c in categories}
        started = time.perf_counter()
        head, _ = learn_head("esc50", examples, [], backend, settings)
        seconds.append(time.perf_counter() - started)
        side = []
        for c in categories:
            out = wave_outputs(
                read_wave(clips[c][test_side]),
                worker.infer,
                worker.num_classes,
                worker.embedding_dim,
                settings.window_s,
                settings.hop_s,
            )
            probs = head.predict(out.embeddings, out.probs).mean(axis=0)
            side.append(head.labels[int(np.argmax(probs))] == label_of[c])
        correct[test_side] = side
    return np.array(correct[0] + correct[1]), seconds


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


def event_f1(backend, worker, categories, clips, settings) -> list[str]:
    """Heads learned from the other scene set's clips vs the esc50 preset, per scene set."""
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
    for scene_set, train_side in ((SET_A, 1), (SET_B, 0)):
        directory = generate(scene_set)
        truth = read_truth(directory)
        examples = {f"h_{c}": [clips[c][train_side]] for c in categories}
        head, _ = learn_head("esc50", examples, [], backend, settings)
        config = EventsConfig().model_copy(
            update={
                "preset": None,
                "groups": {
                    label: GroupConfig(labels=[label], threshold_on=float(t))
                    for label, t in zip(head.labels, head.thresholds, strict=True)
                },
            }
        )
        head_settings = DetectorSettings.from_config(
            config, [Group(label, (i,)) for i, label in enumerate(head.labels)]
        )
        scores = {"preset": None, "head": None}
        for scene, events in truth.items():
            w = cache.get(directory / f"{scene}.wav", 3.0, 0.5)
            found = {
                "preset": detect_events_offline(w.starts, w.stops, w.probs, preset),
                "head": detect_events_offline(
                    w.starts, w.stops, head.predict(w.embeddings, w.probs), head_settings
                ),
            }
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-finetune", action="store_true")
    parser.add_argument("--skip-events", action="store_true")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    loaded = load_model("mn04", WEIGHTS, download=False)
    worker = InferenceWorker(loaded, device="cpu", threads=2, backend="torch")
    backend = Backend(
        worker.infer, loaded.name, loaded.sha256, worker.num_classes, worker.embedding_dim
    )
    settings = LearnSettings()
    categories, clips, mapping = esc50_clips()

    print("## k-shot clip accuracy on ESC-50 dev (50 categories, k = 1, both ways)\n")
    print("| method | accuracy | 95% CI | clips |\n|---|---|---|---|")
    zs = zero_shot(worker, categories, clips, mapping)
    print(accuracy_row("zero-shot AudioSet mapping (baseline, whole clip)", zs))
    head, learn_s = head_kshot(backend, worker, categories, clips, settings)
    print(accuracy_row("few-shot head (3 s windows, mean)", head))
    if not args.skip_finetune:
        tuned, tune_s = finetuned_kshot(categories, clips, args.epochs)
        print(accuracy_row(f"fine-tuned mn04 ({args.epochs} epochs, last blocks)", tuned))
    wins, losses = int((head & ~zs).sum()), int((zs & ~head).sum())
    print(
        f"\nhead - zero-shot: {head.mean() - zs.mean():+.3f} ({wins} clips only the head "
        f"gets right, {losses} only zero-shot); learning each head: "
        f"{', '.join(f'{s:.1f} s' for s in learn_s)}"
    )
    if not args.skip_finetune:
        print(f"fine-tuning each side: {', '.join(f'{s:.0f} s' for s in tune_s)}")
    if not args.skip_events:
        print("\n## Event F1 on generated scenes (heads from clips outside the scenes)\n")
        print("| scenes | method | F1 | precision | recall |\n|---|---|---|---|---|")
        for row in event_f1(backend, worker, categories, clips, settings):
            print(row)
    print("\n## Cost\n\n| what | measured | target |\n|---|---|---|")
    for row in costs(backend, worker, categories, clips, settings):
        print(row)


if __name__ == "__main__":
    main()

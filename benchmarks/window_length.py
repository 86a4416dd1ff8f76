"""How long should a window be? Zero-shot ESC-50 accuracy of the tagger by window length.

On the 100 clips of ``../shared/audio/esc50-dev`` (2 per ESC-50 class), each category
scores the highest probability of the AudioSet classes it maps to
(``esc50_to_audioset.csv``) and the prediction is the best-scoring category, as in
``../shared/audio/README.md``. Two ways to see a clip through a window of W seconds:

- ``crop``: one window centred on the clip's loudest 100 ms (the reference protocol);
- ``sliding``: the live pipeline's windows (``soundwatch tag``; W seconds every
  ``--hop``), each category scored by its maximum over the windows.

Prints a markdown table; the defaults in ``config.yaml`` come from it (docs/pipeline.md).

    python benchmarks/window_length.py [--model mn04] [--weights PATH] [--hop 0.5]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from soundwatch.config import Config, apply_overrides
from soundwatch.dsp import logmel
from soundwatch.runner import Tagger, tag_file
from soundwatch.stream import read_audio_file

SHARED = Path(__file__).resolve().parents[2] / "shared"
ESC50 = SHARED / "audio" / "esc50-dev"
WINDOWS_S = (1.0, 2.0, 3.0, 5.0)


def load_map() -> tuple[list[str], list[list[int]]]:
    categories, indices = [], []
    with open(ESC50 / "esc50_to_audioset.csv", newline="") as f:
        for row in csv.DictReader(f):
            categories.append(row["category"])
            indices.append([int(i) for i in row["audioset_indices"].split(";")])
    return categories, indices


def category_scores(probs: np.ndarray, indices: list[list[int]]) -> np.ndarray:
    return np.array([probs[idx].max() for idx in indices])


def loudest_crop(wave: np.ndarray, seconds: float, rate: int = 32000) -> np.ndarray:
    n = int(seconds * rate)
    if len(wave) <= n:
        return wave
    hop = rate // 10
    energy = np.convolve(wave.astype(np.float64) ** 2, np.ones(hop), mode="same")
    centre = int(np.argmax(energy))
    start = min(max(0, centre - n // 2), len(wave) - n)
    return wave[start : start + n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mn04")
    parser.add_argument("--weights", default=str(SHARED / "models" / "mn04_as_mAP_432.pt"))
    parser.add_argument("--hop", type=float, default=0.5)
    args = parser.parse_args()

    config = apply_overrides(Config(), {"model.name": args.model, "model.weights": args.weights})
    tagger = Tagger.from_config(config)
    categories, indices = load_map()
    with open(ESC50 / "labels.csv", newline="") as f:
        clips = [(row["filename"], row["category"]) for row in csv.DictReader(f)]

    rows = []
    for seconds in WINDOWS_S:
        crop_hits = sliding_hits = 0
        started = time.perf_counter()
        for filename, category in clips:
            path = ESC50 / "audio" / filename
            wave, _ = read_audio_file(path)
            mel = logmel(loudest_crop(wave, seconds))
            probs, _ = tagger.worker.infer(mel[None])
            crop_hits += categories[int(np.argmax(category_scores(probs[0], indices)))] == category
            results = tag_file(path, tagger, window_s=seconds, hop_s=min(args.hop, seconds)).windows
            best = np.max([category_scores(r.probs, indices) for r in results], axis=0)
            sliding_hits += categories[int(np.argmax(best))] == category
        elapsed = time.perf_counter() - started
        rows.append((seconds, crop_hits / len(clips), sliding_hits / len(clips), elapsed))

    print(f"model {args.model}, {len(clips)} ESC-50 clips, sliding hop {args.hop} s\n")
    print("| window (s) | accuracy, loudest crop | accuracy, sliding windows (max) | time (s) |")
    print("| ---: | ---: | ---: | ---: |")
    for seconds, crop, sliding, elapsed in rows:
        print(f"| {seconds:.0f} | {crop:.2f} | {sliding:.2f} | {elapsed:.1f} |")


if __name__ == "__main__":
    main()

"""What float16 edge frames cost: mn04 probabilities from float16 vs float32 log-mel frames.

An edge node sends its log-mel frames as float16 by default (half the bandwidth of
float32). This runs the real mn04 checkpoint on every 3 s window (hop 0.5 s) of the real
clips, once from the float32 frames and once from the same frames rounded to float16, and
prints per clip: windows, the largest absolute probability difference, and how often the
top-5 labels agree (as a set, and in order). docs/edge.md keeps the table;
tests/test_edge.py uses the largest difference (with a margin) as its tolerance.

    .venv/bin/python benchmarks/edge_float16.py [--backend torch|onnx]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from soundwatch.dsp import logmel
from soundwatch.dsp.windows import MelWindower, seconds_to_frames
from soundwatch.models import InferenceWorker, load_model
from soundwatch.stream.decode import iter_resampled

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def windows_of(frames: np.ndarray, window_s: float, hop_s: float) -> list[np.ndarray]:
    windower = MelWindower(seconds_to_frames(window_s), seconds_to_frames(hop_s))
    return [w.mel for w in windower.push(frames) + windower.flush()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    parser.add_argument("--window", type=float, default=3.0)
    parser.add_argument("--hop", type=float, default=0.5)
    args = parser.parse_args()
    loaded = load_model("mn04", SHARED / "models" / "mn04_as_mAP_432.pt")
    worker = InferenceWorker(loaded, device="cpu", backend=args.backend)
    print(f"mn04 ({args.backend}), window {args.window} s, hop {args.hop} s")
    print("| clip | windows | max abs diff | top-5 same set | top-5 same order |")
    print("|---|---:|---:|---:|---:|")
    worst = 0.0
    totals = [0, 0, 0]
    for path in sorted((SHARED / "audio" / "clips").glob("*.wav")):
        audio = np.concatenate(list(iter_resampled(path)))
        frames = logmel(audio)
        exact = windows_of(frames, args.window, args.hop)
        half = windows_of(frames.astype(np.float16).astype(np.float32), args.window, args.hop)
        diff, same_set, same_order = 0.0, 0, 0
        for a, b in zip(exact, half, strict=True):
            pa, _ = worker.infer(a[None])
            pb, _ = worker.infer(b[None])
            diff = max(diff, float(np.abs(pa - pb).max()))
            ta, tb = np.argsort(-pa[0])[:5], np.argsort(-pb[0])[:5]
            same_set += set(ta) == set(tb)
            same_order += bool((ta == tb).all())
        worst = max(worst, diff)
        totals[0] += len(exact)
        totals[1] += same_set
        totals[2] += same_order
        print(
            f"| {path.name} | {len(exact)} | {diff:.2e} | {same_set}/{len(exact)} "
            f"| {same_order}/{len(exact)} |"
        )
    print(
        f"| all | {totals[0]} | {worst:.2e} | {totals[1]}/{totals[0]} | {totals[2]}/{totals[0]} |"
    )


if __name__ == "__main__":
    main()

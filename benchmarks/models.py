"""Benchmark the taggers on the CPU: eager torch vs channels_last vs ONNX Runtime.

For each model (random weights: speed does not depend on them), window length (1 s, 3 s,
10 s = 100, 300, 1000 frames), batch size and thread count, the three variants are timed
round-robin (so load from other processes hits them alike), ``--runs`` times each after a
warm-up call; the table gives the median milliseconds per window and the speed-up against
**eager float32** (the baseline, ``x faster``). The ONNX graphs are exported once and cached
(keyed by the weights' hash) in the soundwatch cache directory; each model's ONNX outputs
are checked against torch on the benchmark input.

    .venv/bin/python benchmarks/models.py [--runs 5] [--models mn04,dymn04] [--frames 100,300]
        [--batches 1,8] [--threads 1,2] [--write-docs]

``--write-docs`` replaces the ``## Models`` section of ``docs/performance.md``.
"""

from __future__ import annotations

import os

# torch's OpenMP threads spin while they wait for work; on a machine shared with other jobs
# two spinning threads cost 10x (measured: mn04, 1 s window, 19 ms with 1 thread, 240 ms
# with 2). Passive waiting must be chosen before torch loads OpenMP, i.e. before its import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import hashlib
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from report import cpu_model, replace_section

from soundwatch.models import build_model, default_cache_dir
from soundwatch.models.onnx_backend import OnnxTagger, export_onnx, onnx_cache_path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "performance.md"
VARIANTS = ("eager", "channels_last", "onnx")
BASELINE = "eager"


@dataclass
class Cell:
    """One (model, frames, batch, threads) configuration and its timings per variant."""

    model: str
    frames: int
    batch: int
    threads: int
    seconds: dict[str, list[float]] = field(default_factory=dict)

    def ms_per_window(self, variant: str) -> float:
        return statistics.median(self.seconds[variant]) * 1000 / self.batch


def calibrated(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights with batch-norm statistics measured on random input, in eval mode.

    A freshly initialised model's activations shrink layer by layer towards zero (its
    batch norms are identities); measured statistics keep them at trained-model scale, so
    no variant is timed on denormal numbers and the ONNX check compares real magnitudes.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(0.5 * torch.randn(8, 1, 128, 300))
    return model.eval()


def weights_key(model: torch.nn.Module) -> str:
    """sha256 over all parameters and buffers (keys the cached ONNX export)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def onnx_for(name: str, model: torch.nn.Module) -> tuple[Path, float]:
    """The cached ONNX export of this model (exporting it if needed); export seconds."""
    path = onnx_cache_path(default_cache_dir(), f"bench-{name}", weights_key(model))
    started = time.perf_counter()
    if not path.is_file():
        print(f"exporting {name} to {path} ...", file=sys.stderr, flush=True)
        export_onnx(model, path)
    return path, time.perf_counter() - started


def runners(
    model: torch.nn.Module, nhwc_model: torch.nn.Module, session: OnnxTagger
) -> dict[str, Callable[[np.ndarray], object]]:
    """One callable per variant, each doing what a worker does with a numpy batch."""

    def eager(x: np.ndarray) -> object:
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    def channels_last(x: np.ndarray) -> object:
        with torch.inference_mode():
            return nhwc_model(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))

    return {"eager": eager, "channels_last": channels_last, "onnx": session.run}


def time_cell(
    cell: Cell, run: dict[str, Callable[[np.ndarray], object]], x: np.ndarray, runs: int
) -> None:
    for fn in run.values():  # warm-up: allocations, kernel selection
        fn(x)
    cell.seconds = {variant: [] for variant in run}
    for _ in range(runs):
        for variant, fn in run.items():
            started = time.perf_counter()
            fn(x)
            cell.seconds[variant].append(time.perf_counter() - started)


def onnx_parity(model: torch.nn.Module, session: OnnxTagger, x: np.ndarray) -> tuple[float, float]:
    """Max |difference| of probabilities and embeddings, ONNX vs eager torch."""
    with torch.inference_mode():
        logits, embedding = model(torch.from_numpy(x))
    probs, emb = session.run(x)
    return (
        float(np.abs(probs - torch.sigmoid(logits).numpy()).max()),
        float(np.abs(emb - embedding.numpy()).max()),
    )


def machine() -> str:
    cpu = cpu_model()
    return (
        f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"
    )


def table(cells: list[Cell]) -> str:
    lines = [
        "| model | window | batch | threads | eager float32 ms/window (baseline) | "
        "channels_last ms/window | vs eager | ONNX Runtime ms/window | vs eager |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in cells:
        base = c.ms_per_window(BASELINE)
        nhwc, ort = c.ms_per_window("channels_last"), c.ms_per_window("onnx")
        lines.append(
            f"| {c.model} | {c.frames / 100:g} s | {c.batch} | {c.threads} | {base:.2f} | "
            f"{nhwc:.2f} | {base / nhwc:.2f}x | {ort:.2f} | {base / ort:.2f}x |"
        )
    return "\n".join(lines)


def summary(cells: list[Cell]) -> str:
    """Per model and variant: geometric mean speed-up over eager across the grid."""
    lines = ["| model | channels_last vs eager (geo. mean) | ONNX Runtime vs eager (geo. mean) |"]
    lines.append("| --- | ---: | ---: |")
    for model in dict.fromkeys(c.model for c in cells):
        own = [c for c in cells if c.model == model]
        means = []
        for variant in ("channels_last", "onnx"):
            ratios = [c.ms_per_window(BASELINE) / c.ms_per_window(variant) for c in own]
            means.append(float(np.exp(np.mean(np.log(ratios)))))
        lines.append(f"| {model} | {means[0]:.2f}x | {means[1]:.2f}x |")
    return "\n".join(lines)


def geo_mean_speedup(cells: list[Cell], variant: str) -> float:
    ratios = [c.ms_per_window(BASELINE) / c.ms_per_window(variant) for c in cells]
    return float(np.exp(np.mean(np.log(ratios)))) if ratios else float("nan")


def notes(cells: list[Cell]) -> str:
    """What the table says, from this run's numbers."""
    mn = [c for c in cells if c.model.startswith("mn")]
    dymn = [c for c in cells if c.model.startswith("dymn")]
    lines = []
    if mn:
        lines.append(
            f"- MobileNets (`mn*`): ONNX Runtime is {geo_mean_speedup(mn, 'onnx'):.1f}x faster "
            f"than eager torch (geometric mean over their cells; it folds batch norms into the "
            f"convolutions and fuses activations), channels_last "
            f"{geo_mean_speedup(mn, 'channels_last'):.1f}x. The torch CPU worker therefore "
            "runs MobileNets in channels_last by default."
        )
    if dymn:
        single = geo_mean_speedup([c for c in dymn if c.batch == 1], "onnx")
        batched = geo_mean_speedup([c for c in dymn if c.batch > 1], "onnx")
        nhwc = geo_mean_speedup(dymn, "channels_last")
        lines.append(
            f"- Dynamic MobileNets (`dymn*`): ONNX Runtime is {single:.1f}x "
            f"eager for single windows but {batched:.1f}x for batches "
            "of 8 and 32: to export with a dynamic batch, each dynamic depthwise conv runs its "
            "4 candidate kernels and mixes the outputs (4x the work) instead of one grouped conv "
            f"with a kernel per example. channels_last: {nhwc:.1f}x "
            "(their per-example convolutions reshape the activations, which undoes the layout), "
            "so DyMN stays in the default layout."
        )
    lines.append(
        "- Two torch threads only help when the cores are otherwise idle. With OpenMP's default "
        "active waiting, two threads on this shared 2-core machine took 240 ms instead of 19 ms "
        "for one mn04 window (1 s); this benchmark sets `OMP_WAIT_POLICY=PASSIVE` before torch "
        "loads, and live runs on busy machines should do the same or use 1 thread."
    )
    return "\n".join(lines)


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per cell (>= 5)")
    parser.add_argument("--models", default="mn04,mn10,dymn04,dymn10")
    parser.add_argument("--frames", type=int_list, default=[100, 300, 1000])
    parser.add_argument("--batches", type=int_list, default=[1, 8, 32])
    parser.add_argument("--threads", type=int_list, default=[1, 2])
    parser.add_argument("--write-docs", action="store_true", help="update docs/performance.md")
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be at least 5")

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    rng = np.random.default_rng(0)
    cells: list[Cell] = []
    parity: list[str] = []
    exports: list[str] = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = calibrated(build_model(name))
        nhwc_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        onnx_path, export_s = onnx_for(name, model)
        exports.append(f"{name} {export_s:.0f} s")
        sessions = {t: OnnxTagger(onnx_path, threads=t) for t in args.threads}
        check = (0.5 * rng.standard_normal((2, 1, 128, 300))).astype(np.float32)
        d_prob, d_emb = onnx_parity(model, sessions[args.threads[0]], check)
        parity.append(f"{name}: probabilities {d_prob:.1e}, embeddings {d_emb:.1e}")
        for threads in args.threads:
            torch.set_num_threads(threads)
            run = runners(model, nhwc_model, sessions[threads])
            for frames in args.frames:
                for batch in args.batches:
                    x = (0.5 * rng.standard_normal((batch, 1, 128, frames))).astype(np.float32)
                    cell = Cell(name, frames, batch, threads)
                    time_cell(cell, run, x, args.runs)
                    cells.append(cell)
                    print(table([cell]).splitlines()[-1], file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()[0]

    text = f"""\
`benchmarks/models.py`: CPU inference cost per mel window, float32, random weights (batch-norm
statistics calibrated on random input so that activations have trained-model magnitudes). Each
cell is the median of {args.runs} runs of one batch (variants timed round-robin after a warm-up
call), divided by the batch size; "vs eager" is the speed-up against **eager float32 torch** (the
baseline) in the same cell. channels_last: the torch model and input in NHWC memory format.
ONNX Runtime: the model exported by `soundwatch.models.onnx_backend` (dynamo exporter, dynamic
batch and time), CPU execution provider, `intra_op_num_threads` = threads. torch threads via
`torch.set_num_threads`, with `OMP_WAIT_POLICY={os.environ.get("OMP_WAIT_POLICY")}` (see below).

Machine: {machine()}; 1-minute load average {load_before:.1f} before and {load_after:.1f} after
(other jobs share these cores, so single cells are noisy; compare within a row). Benchmark
time {elapsed / 60:.1f} min; ONNX export (once, then cached; 0 s = found in the cache):
{", ".join(exports)}.

{table(cells)}

Geometric mean of the speed-ups over all cells of a model:

{summary(cells)}

{notes(cells)}

ONNX Runtime vs torch on a [2, 1, 128, 300] input, max abs difference: {"; ".join(parity)}.
"""
    print(text)
    if args.write_docs:
        replace_section("Models", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

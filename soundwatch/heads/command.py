"""``soundwatch learn`` (a head from a few examples) and ``soundwatch embed`` (window
embeddings of files)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from soundwatch.errors import SoundwatchError


def _user_errors(func):  # the CLI's wrapper, imported late (cli imports this module)
    from soundwatch.cli import user_errors

    return user_errors(func)


def _backbone_config(
    config_path: Path | None,
    model_name: str | None,
    weights: Path | None,
    device: str | None,
    backend: str | None,
    threads: int | None,
    window: float | None,
    hop: float | None,
):
    from soundwatch.config import apply_overrides, load_config, model_and_window_overrides

    return apply_overrides(
        load_config(config_path),
        model_and_window_overrides(model_name, weights, device, backend, threads, window, hop),
    )


def _backbone_options(func):
    options = [
        click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path)),
        click.option("--model", "model_name", metavar="NAME", help="mn04 (default), mn10, ..."),
        click.option("--weights", type=click.Path(dir_okay=False, path_type=Path)),
        click.option("--window", type=float, help="seconds (default: the config's, 3)"),
        click.option("--hop", type=float, help="seconds (default: the config's, 0.5)"),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"])),
        click.option("--backend", help="torch | onnx (default: the config's)"),
        click.option("--threads", type=int),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.command("learn")
@click.argument("name")
@click.option(
    "--examples",
    "examples",
    multiple=True,
    required=True,
    metavar="LABEL=PATH",
    help="examples of a sound: a file or a folder of files (repeatable, also per label)",
)
@click.option(
    "--negatives",
    "negatives",
    multiple=True,
    metavar="PATH",
    help="the room without the sounds, and sounds not to take for them (repeatable)",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="default NAME.swhead")
@click.option("--copies", type=click.IntRange(0, 32), default=3, show_default=True)
@click.option("--hidden", type=click.IntRange(0, 1024), default=0, help="MLP width; 0 = linear")
@click.option("--seed", type=int, default=0, show_default=True)
@_backbone_options
def learn(
    name: str,
    examples: tuple[str, ...],
    negatives: tuple[str, ...],
    out: Path | None,
    copies: int,
    hidden: int,
    seed: int,
    config_path: Path | None,
    model_name: str | None,
    weights: Path | None,
    window: float | None,
    hop: float | None,
    device: str | None,
    backend: str | None,
    threads: int | None,
) -> None:
    """Learn a head NAME that tags your own sounds from a few examples of each.

    \b
    soundwatch learn home --examples doorbell=rec/doorbell/ --negatives rec/room.wav
    """
    backbone = (config_path, model_name, weights, device, backend, threads, window, hop)
    _user_errors(_learn)(name, examples, negatives, out, copies, hidden, seed, backbone)


def _learn(name, examples, negatives, out, copies, hidden, seed, backbone) -> None:
    from soundwatch.heads.fileformat import HEAD_SUFFIX, check_label
    from soundwatch.heads.learn import (
        Backend,
        LearnSettings,
        audio_files,
        learn_head,
        parse_examples,
    )
    from soundwatch.models.parallel import ParallelInfer
    from soundwatch.runner import Tagger, forward_chunks

    config = _backbone_config(*backbone)
    check_label(name)
    parsed = parse_examples(examples)
    negative_files = [f for path in negatives for f in audio_files(path)]
    out = out or Path(f"{name}{HEAD_SUFFIX}")
    tagger = Tagger.from_config(config)
    # Forward passes on every core, as run and tag split them (model.parallel).
    infer = ParallelInfer(tagger.worker.infer, forward_chunks(config, tagger))
    backend = Backend(
        infer=infer,
        model=tagger.loaded.name,
        weights_sha256=tagger.loaded.sha256,
        num_classes=tagger.worker.num_classes,
        embedding_dim=tagger.worker.embedding_dim,
    )
    settings = LearnSettings(
        window_s=config.windows.window,
        hop_s=config.windows.hop,
        copies=copies,
        hidden=hidden,
        seed=seed,
    )
    try:
        head, report = learn_head(name, parsed, negative_files, backend, settings)
    finally:
        infer.close()
    head.save(out)
    click.echo(f"soundwatch: head {name} saved to {out}", err=True)
    click.echo(f"{'label':<20} {'files':>5} {'windows':>8} {'threshold':>9} {'held-out F1':>11}")
    for label in head.labels:
        click.echo(
            f"{label:<20} {report.files[label]:>5} {report.windows[label]:>8} "
            f"{report.thresholds[label]:>9.2f} {report.heldout_f1[label]:>11.2f}"
        )
    click.echo(
        f"{'(negatives)':<20} {report.files['(negatives)']:>5} {report.windows['(negatives)']:>8}"
    )
    click.echo(
        f"took {report.seconds['audio_and_embedding']:.1f} s embedding, "
        f"{report.seconds['fitting']:.1f} s fitting (window {settings.window_s} s, "
        f"{copies} augmented copies)",
        err=True,
    )


@click.command("embed")
@click.argument("paths", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per window (default)")
@click.option(
    "--npy",
    "npy_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write one .npz: per file its window times [N, 2] and embeddings [N, D]",
)
@_backbone_options
def embed(
    paths: tuple[str, ...],
    as_json: bool,
    npy_out: Path | None,
    config_path: Path | None,
    model_name: str | None,
    weights: Path | None,
    window: float | None,
    hop: float | None,
    device: str | None,
    backend: str | None,
    threads: int | None,
) -> None:
    """Write the backbone's embedding of every window of audio files."""
    backbone = (config_path, model_name, weights, device, backend, threads, window, hop)
    _user_errors(_embed)(paths, as_json, npy_out, backbone)


def _embed(paths, as_json: bool, npy_out: Path | None, backbone) -> None:
    import numpy as np

    from soundwatch.heads.embeddings import read_wave, wave_outputs
    from soundwatch.models.parallel import ParallelInfer
    from soundwatch.runner import Tagger, forward_chunks

    config = _backbone_config(*backbone)
    if as_json and npy_out is not None:
        raise SoundwatchError("--json and --npy exclude each other; choose one")
    tagger = Tagger.from_config(config)
    worker = tagger.worker
    infer = ParallelInfer(worker.infer, forward_chunks(config, tagger))  # as run and tag
    arrays: dict[str, np.ndarray] = {}
    try:
        for i, path in enumerate(paths):
            outputs = wave_outputs(
                read_wave(path),
                infer,
                worker.num_classes,
                worker.embedding_dim,
                config.windows.window,
                config.windows.hop,
            )
            if npy_out is not None:
                arrays[f"times_{i}"] = outputs.times
                arrays[f"embeddings_{i}"] = outputs.embeddings
                continue
            for (t_start, t_end), vector in zip(outputs.times, outputs.embeddings, strict=True):
                record = {
                    "file": path,
                    "t_start": round(float(t_start), 3),
                    "t_end": round(float(t_end), 3),
                    "embedding": [round(float(v), 5) for v in vector],
                }
                click.echo(json.dumps(record))
    finally:
        infer.close()  # as learn does: no worker thread left behind
    if npy_out is not None:
        meta = {
            "files": list(paths),
            "model": tagger.loaded.name,
            "weights_sha256": tagger.loaded.sha256,
            "window_s": config.windows.window,
            "hop_s": config.windows.hop,
        }
        with open(npy_out, "wb") as fh:  # the name as given (savez would add .npz)
            np.savez(fh, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
        click.echo(f"soundwatch: {len(paths)} file(s) embedded into {npy_out}", err=True)
    sys.stdout.flush()

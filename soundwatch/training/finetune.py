"""Fine-tune a backbone's last blocks plus a new head on a labelled folder of clips.

Where a user has many examples (a few hundred clips), training the last blocks of the
MobileNet together with the head transfers better than a head on frozen embeddings. The
result is two files that load like everything else: the backbone as a plain checkpoint of
the same architecture (``--weights OUT``; its AudioSet classifier is kept as it was, so
the built-in tags and event groups still work) and a head file learned jointly with it
(``OUT`` with ``.swhead``: the new labels, tied to that checkpoint's hash).

Training reads each clip's log-mel once; per step it takes a random window of each clip
(time shift), adds a random gain (a shift of the log-mel) and applies Freq-MixStyle
(:mod:`soundwatch.heads.augment`). Batch norm layers keep their AudioSet statistics (eval
mode), which suits small data sets; frozen blocks get no gradients, so a CPU can do it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from soundwatch.dsp import logmel
from soundwatch.dsp.windows import seconds_to_frames
from soundwatch.errors import SoundwatchError
from soundwatch.heads import augment
from soundwatch.heads.embeddings import read_wave
from soundwatch.heads.fileformat import HEAD_SUFFIX, Backbone, Head, check_label
from soundwatch.heads.learn import best_threshold
from soundwatch.models.loader import LoadedModel
from soundwatch.models.weights import LABELS_FILE, ONTOLOGY_FILE, resolve_bundle_file

log = logging.getLogger(__name__)
GAIN_DB = (-10.0, 6.0)
LOG_MEL_PER_DB = math.log(10) / 10 / 5  # the frontend's (log(power) + 4.5) / 5 scale


@dataclass(frozen=True)
class FinetuneSettings:
    window_s: float = 3.0
    epochs: int = 5
    batch: int = 16
    freeze_until: int | None = None  # feature blocks [0, freeze_until) stay fixed
    lr: float = 3e-4
    head_lr: float = 3e-3
    max_steps: int | None = None  # stop an epoch after this many steps (quick checks)
    seed: int = 0


def read_labels_csv(path: Path, data_dir: Path) -> list[tuple[Path, str]]:
    """``filename,label`` rows (``category`` is accepted for ``label``, as in ESC-50)."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as error:
        raise SoundwatchError(f"cannot read labels file {path}: {error.strerror}") from None
    if not rows or "filename" not in rows[0]:
        raise SoundwatchError(
            f"labels file {path} needs a header with 'filename' and 'label' (or 'category')"
        )
    column = "label" if "label" in rows[0] else "category" if "category" in rows[0] else None
    if column is None:
        raise SoundwatchError(f"labels file {path} has no 'label' (or 'category') column")
    items = []
    for row in rows:
        clip = data_dir / row["filename"]
        if not clip.exists():
            raise SoundwatchError(f"{path}: {row['filename']} is not in {data_dir}")
        items.append((clip, check_label(row[column].strip())))
    return items


def _freeze(model: nn.Module, freeze_until: int) -> list[nn.Parameter]:
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        raise SoundwatchError("finetune supports the MobileNets (mn01 ... mn40)")
    if not 0 <= freeze_until <= len(features):
        raise SoundwatchError(
            f"--freeze-until {freeze_until}: the model has {len(features)} feature blocks; "
            f"use 0 (train all) to {len(features)} (train only the head)"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    trained = [p for block in features[freeze_until:] for p in block.parameters()]
    for p in trained:
        p.requires_grad_(True)
    return trained


def _batches(
    mels: list[np.ndarray], order: np.ndarray, frames: int, rng: np.random.Generator, batch: int
):
    for lo in range(0, len(order), batch):
        chosen = order[lo : lo + batch]
        windows = []
        for i in chosen:
            mel = mels[i]
            if mel.shape[1] < frames:  # short clip: pad with the quietest log-mel value
                pad = np.full((mel.shape[0], frames - mel.shape[1]), mel.min(), np.float32)
                at = int(rng.integers(0, frames - mel.shape[1] + 1))
                mel = np.concatenate([pad[:, :at], mel, pad[:, at:]], axis=1)
            start = int(rng.integers(0, mel.shape[1] - frames + 1))
            window = mel[:, start : start + frames]
            window = window + np.float32(rng.uniform(*GAIN_DB) * LOG_MEL_PER_DB)
            windows.append(window)
        yield chosen, augment.freq_mixstyle(windows, rng)


def finetune(
    loaded: LoadedModel,
    items: list[tuple[Path, str]],
    settings: FinetuneSettings,
    device: torch.device,
    progress: Callable[[str], None] | None = None,
) -> tuple[nn.Module, Head]:
    """Train ``loaded``'s last blocks and a new head on ``items``; return both (the head
    still needs the saved checkpoint's hash: see :func:`save_finetuned`)."""
    labels = sorted({label for _, label in items})
    targets = np.array([labels.index(label) for _, label in items])
    mels = [logmel(read_wave(path)) for path, _ in items]
    model = loaded.model
    features = model.features
    freeze_until = settings.freeze_until
    if freeze_until is None:
        freeze_until = max(0, len(features) - 3)
    trained = _freeze(model, freeze_until)
    head = nn.Linear(loaded.embedding_dim, len(labels))
    model.to(device).eval()  # batch norm keeps its statistics
    head.to(device)
    optimiser = torch.optim.AdamW(
        [{"params": trained, "lr": settings.lr}, {"params": head.parameters()}],
        lr=settings.head_lr,
        weight_decay=1e-4,
    )
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    frames = seconds_to_frames(settings.window_s)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(settings.epochs):
        started, total, steps = time.perf_counter(), 0.0, 0
        for chosen, windows in _batches(
            mels, rng.permutation(len(mels)), frames, rng, settings.batch
        ):
            x = torch.from_numpy(np.stack(windows)[:, None]).to(device)
            y = torch.from_numpy(targets[chosen]).to(device)
            with torch.enable_grad():
                _, embedding = model(x)
                loss = loss_fn(head(embedding), y)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            total += float(loss.detach())
            steps += 1
            if settings.max_steps is not None and steps >= settings.max_steps:
                break
        if progress is not None:
            progress(
                f"epoch {epoch + 1}/{settings.epochs}: loss {total / max(steps, 1):.3f} "
                f"({steps} steps, {time.perf_counter() - started:.0f} s)"
            )
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    thresholds = _thresholds(model, head, mels, targets, frames, len(labels), device)
    weights = head.weight.detach().cpu().numpy().T.astype(np.float32)
    bias = head.bias.detach().cpu().numpy().astype(np.float32)
    out_head = Head(
        name="finetuned",
        labels=labels,
        thresholds=thresholds,
        mean=np.zeros(loaded.embedding_dim, np.float32),
        scale=np.ones(loaded.embedding_dim, np.float32),
        weights=[weights],
        biases=[bias],
        backbone=Backbone(loaded.name, "", loaded.embedding_dim, settings.window_s),
        info={"clips": len(items), "epochs": settings.epochs, "freeze_until": freeze_until},
    )
    return model.cpu(), out_head


def _thresholds(model, head, mels, targets, frames, n_labels, device) -> np.ndarray:
    """Per-label thresholds of the head's sigmoid on the training clips' centre windows
    (a softmax-trained head read one label at a time, as the pipeline reads heads)."""
    with torch.inference_mode():
        scores = []
        for mel in mels:
            start = max(0, (mel.shape[1] - frames) // 2)
            x = torch.from_numpy(np.ascontiguousarray(mel[None, None, :, start : start + frames]))
            _, embedding = model(x.to(device))
            scores.append(torch.sigmoid(head(embedding)).cpu().numpy()[0])
    scores = np.stack(scores)
    return np.array(
        [best_threshold(scores[:, h], targets == h)[0] for h in range(n_labels)], np.float32
    )


def save_finetuned(
    model: nn.Module, head: Head, out: Path, name: str, original: LoadedModel
) -> tuple[Path, Path]:
    """Write the checkpoint to ``out`` with the label list and ontology beside it (as for
    the official checkpoints) and its head (``.swhead``) tied to the checkpoint's sha256."""
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    for bundle in (LABELS_FILE, ONTOLOGY_FILE):
        try:
            found = resolve_bundle_file(bundle, original.weights_path.parent, download=False)
        except SoundwatchError:
            continue  # the ontology is optional; the labels were found when loading
        if found.resolve() != (out.parent / bundle).resolve():
            shutil.copyfile(found, out.parent / bundle)
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    final = dataclasses.replace(
        head, name=name, backbone=dataclasses.replace(head.backbone, weights_sha256=sha)
    )
    head_path = final.save(out.with_suffix(HEAD_SUFFIX))
    return out, head_path

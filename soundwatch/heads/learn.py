"""Learn a head from a few examples: augmented windows -> embeddings -> logistic regression
(or a tiny MLP) -> per-label thresholds calibrated on held-back windows.

The head reads each window's embedding and the square roots of its AudioSet probabilities
(:func:`soundwatch.heads.fileformat.head_features`): with one example per sound the
backbone's own classes are the strongest prior there is.

Each label's example files (and the negatives: the room without the sound, other sounds
that must not count) are cut into the pipeline's windows, clean and in augmented copies
(:mod:`soundwatch.heads.augment`), and embedded by the backbone once. A one-vs-rest
sigmoid head is fitted on standardised embeddings (full-batch L-BFGS, L2 penalty, each
label's positives weighted up to balance its negatives). Thresholds come from
cross-fitting: the windows are split into folds (by file where a label has several, by
position within the file where it has one), a head fitted without each fold scores that
fold's clean windows, and each label's threshold is the one that maximises F1 on those
held-back scores. The final head is fitted on everything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from soundwatch.errors import SoundwatchError
from soundwatch.heads import augment
from soundwatch.heads.embeddings import Infer, infer_windows, mel_windows, read_wave
from soundwatch.heads.fileformat import INPUTS, Backbone, Head, check_label, head_features

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au", ".opus")
FOLDS = 3
NEGATIVE = -1  # label index of negative windows


@dataclass(frozen=True)
class LearnSettings:
    """How a head is learned; the defaults are what ``soundwatch learn`` uses."""

    window_s: float = 3.0
    hop_s: float = 0.5
    copies: int = 3  # augmented copies of every file besides the clean one
    gain_db: tuple[float, float] = (-12.0, 6.0)
    snr_db: tuple[float, float] = (3.0, 25.0)
    shift_s: float = 0.5  # most cut from a copy's start
    mixstyle_p: float = 0.7
    hidden: int = 0  # 0: logistic regression; else one hidden ReLU layer of this width
    l2: float = 1e-3  # L2 penalty on the weights (per window, on standardised inputs)
    max_iter: int = 200  # L-BFGS iterations
    calibrate: bool = True
    seed: int = 0
    inputs: str = INPUTS[-1]  # embedding + sqrt(AudioSet probabilities)


@dataclass
class Backend:
    """The backbone a head is learned on: its inference function and identity."""

    infer: Infer
    model: str
    weights_sha256: str
    num_classes: int
    embedding_dim: int


@dataclass
class TrainingSet:
    """Embedded windows: ``features`` what the head reads (:func:`head_features`); ``label``
    the label index or ``NEGATIVE``; ``fold`` the cross-fitting fold; ``clean`` marks
    windows of unaugmented audio (scored for calibration)."""

    features: np.ndarray
    label: np.ndarray
    fold: np.ndarray
    clean: np.ndarray
    seconds_embedding: float = 0.0  # reading the files, augmenting and embedding them


@dataclass
class LearnReport:
    """What learning saw and took, for the command's summary and the head's ``info``."""

    files: dict[str, int]
    windows: dict[str, int]
    thresholds: dict[str, float]
    heldout_f1: dict[str, float]
    seconds: dict[str, float] = field(default_factory=dict)


def audio_files(path: str | Path) -> list[Path]:
    """``path`` itself, or the audio files in a folder (sorted; not recursive)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        if not found:
            raise SoundwatchError(
                f"folder {str(path)!r} holds no audio files ({', '.join(AUDIO_SUFFIXES)})"
            )
        return found
    if not path.exists():
        raise SoundwatchError(f"example not found: {str(path)!r}")
    return [path]


def parse_examples(values: Sequence[str]) -> dict[str, list[Path]]:
    """``LABEL=PATH`` arguments (repeatable per label) -> label -> files, in given order."""
    examples: dict[str, list[Path]] = {}
    for value in values:
        label, sep, path = value.partition("=")
        if not sep or not label.strip() or not path.strip():
            raise SoundwatchError(
                f"--examples {value!r}: write LABEL=PATH (a file or a folder of files)"
            )
        check_label(label.strip())
        examples.setdefault(label.strip(), []).extend(audio_files(path.strip()))
    if not examples:
        raise SoundwatchError("give at least one --examples LABEL=PATH")
    return examples


def _folds_by_position(n: int) -> np.ndarray:
    return np.minimum((np.arange(n) * FOLDS) // max(n, 1), FOLDS - 1)


def build_training_set(
    examples: dict[str, list[Path]],
    negatives: Sequence[Path],
    backend: Backend,
    settings: LearnSettings,
    progress: Callable[[str], None] | None = None,
) -> TrainingSet:
    """Embed every file's windows, clean and in ``settings.copies`` augmented copies."""
    started = time.perf_counter()  # reading, augmenting and embedding: seconds_embedding
    rng = np.random.default_rng(settings.seed)
    window_samples = round(settings.window_s * augment.SAMPLE_RATE)
    sources: list[tuple[int, Path]] = [
        (index, path) for index, label in enumerate(examples) for path in examples[label]
    ]
    sources += [(NEGATIVE, path) for path in negatives]
    waves = [read_wave(path) for _, path in sources]
    user_backgrounds = [w for (index, _), w in zip(sources, waves, strict=True) if index < 0]
    backgrounds = user_backgrounds or augment.synthetic_backgrounds(rng)
    files_of: dict[int, int] = {}
    for index, _ in sources:
        files_of[index] = files_of.get(index, 0) + 1
    seen: dict[int, int] = {}
    mels: list[np.ndarray] = []
    labels: list[int] = []
    folds: list[int] = []
    clean: list[bool] = []
    for (index, path), wave in zip(sources, waves, strict=True):
        nth = seen.get(index, 0)
        seen[index] = nth + 1
        by_file = files_of[index] >= 2
        own = [b for b in user_backgrounds if b is not wave] or augment.synthetic_backgrounds(rng)
        for copy in range(settings.copies + 1):
            if copy == 0:
                audio = augment.place_in(wave, window_samples, None, rng)
            else:
                audio = augment.gain(wave, rng, *settings.gain_db)
                audio = augment.shift(audio, rng, settings.shift_s)
                pool = backgrounds if index >= 0 else own
                bg = pool[int(rng.integers(0, len(pool)))]
                audio = augment.place_in(audio, window_samples, None, rng)
                audio = augment.mix(audio, bg, rng, *settings.snr_db)
            _, file_mels = mel_windows(audio, settings.window_s, settings.hop_s)
            if copy > 0:
                file_mels = augment.freq_mixstyle(file_mels, rng, p=settings.mixstyle_p)
            n = len(file_mels)
            mels.extend(file_mels)
            labels.extend([index] * n)
            folds.extend([nth % FOLDS] * n if by_file else _folds_by_position(n).tolist())
            clean.extend([copy == 0] * n)
        if progress is not None:
            progress(f"{path}: {n} windows x {settings.copies + 1}")
    probs, embeddings = infer_windows(
        mels, backend.infer, backend.num_classes, backend.embedding_dim
    )
    return TrainingSet(
        features=head_features(embeddings, probs, settings.inputs),
        label=np.asarray(labels, dtype=np.int64),
        fold=np.asarray(folds, dtype=np.int64),
        clean=np.asarray(clean, dtype=bool),
        seconds_embedding=time.perf_counter() - started,
    )


@dataclass
class _Fitted:
    mean: np.ndarray
    scale: np.ndarray
    weights: list[np.ndarray]
    biases: list[np.ndarray]

    def predict(self, x: np.ndarray) -> np.ndarray:
        h = (x - self.mean) / self.scale
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ w + b
            if i < len(self.weights) - 1:
                h = np.maximum(h, 0.0)
        return 1.0 / (1.0 + np.exp(-np.clip(h, -60, 60)))


def fit(x: np.ndarray, label: np.ndarray, num_labels: int, settings: LearnSettings) -> _Fitted:
    """One-vs-rest sigmoid head on ``x`` [N, D]; ``label`` [N] (``NEGATIVE`` = none)."""
    mean = x.mean(axis=0)
    scale = np.maximum(x.std(axis=0), 1e-3 * (x.std() + 1e-6))
    torch.manual_seed(settings.seed)
    xt = torch.from_numpy(((x - mean) / scale).astype(np.float32))
    y = torch.zeros(len(x), num_labels)
    rows = np.flatnonzero(label >= 0)
    y[rows, label[rows]] = 1.0
    positives = y.sum(0)
    pos_weight = ((len(x) - positives) / positives.clamp(min=1.0)).clamp(1.0, 100.0)
    dim = x.shape[1]
    if settings.hidden:
        model: nn.Module = nn.Sequential(
            nn.Linear(dim, settings.hidden), nn.ReLU(), nn.Linear(settings.hidden, num_labels)
        )
    else:
        model = nn.Sequential(nn.Linear(dim, num_labels))
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    optimiser = torch.optim.LBFGS(
        model.parameters(), lr=1.0, max_iter=settings.max_iter, line_search_fn="strong_wolfe"
    )
    linears = [m for m in model if isinstance(m, nn.Linear)]

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = loss_fn(model(xt), y)
        loss = loss + settings.l2 * sum((m.weight**2).sum() for m in linears)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return _Fitted(
        mean=mean.astype(np.float32),
        scale=scale.astype(np.float32),
        weights=[m.weight.detach().numpy().T.astype(np.float32).copy() for m in linears],
        biases=[m.bias.detach().numpy().astype(np.float32).copy() for m in linears],
    )


def best_threshold(scores: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """The threshold in [0.05, 0.95] with the highest F1 of ``scores >= t`` against
    ``truth`` (the middle of the best run of candidate thresholds) and that F1."""
    candidates = np.linspace(0.05, 0.95, 91)
    predicted = scores[None, :] >= candidates[:, None]
    tp = (predicted & truth[None, :]).sum(1)
    f1 = 2 * tp / np.maximum(predicted.sum(1) + truth.sum(), 1)
    best = np.flatnonzero(f1 >= f1.max() - 1e-9)
    run = best[best - best[0] == np.arange(len(best))]  # the first contiguous run
    return float(candidates[run[len(run) // 2]]), float(f1.max())


def calibrate(
    data: TrainingSet, num_labels: int, settings: LearnSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Per-label thresholds and held-back F1 from cross-fitted scores of clean windows."""
    heldout = np.full((len(data.label), num_labels), np.nan, dtype=np.float32)
    for f in range(FOLDS):
        test = (data.fold == f) & data.clean
        train = data.fold != f
        if not test.any() or not (data.label[train] >= 0).any():
            continue
        fitted = fit(data.features[train], data.label[train], num_labels, settings)
        heldout[test] = fitted.predict(data.features[test])
    thresholds = np.full(num_labels, 0.5, dtype=np.float32)
    f1 = np.zeros(num_labels, dtype=np.float32)
    scored = ~np.isnan(heldout[:, 0])
    for h in range(num_labels):
        truth = data.label[scored] == h
        if truth.any():
            thresholds[h], f1[h] = best_threshold(heldout[scored, h], truth)
    return thresholds, f1


def learn_head(
    name: str,
    examples: dict[str, list[Path]],
    negatives: Sequence[Path],
    backend: Backend,
    settings: LearnSettings,
    progress: Callable[[str], None] | None = None,
) -> tuple[Head, LearnReport]:
    """Learn a head named ``name`` from ``examples`` (label -> files) and ``negatives``."""
    check_label(name)
    labels = list(examples)
    if len(labels) == 1 and not negatives:
        raise SoundwatchError(
            f"a head with one label ({labels[0]}) needs --negatives: recordings of the room "
            "without the sound (and of sounds it must not take for it)"
        )
    data = build_training_set(examples, negatives, backend, settings, progress)
    return head_from_training_set(name, examples, negatives, data, backend, settings)


def head_from_training_set(
    name: str,
    examples: dict[str, list[Path]],
    negatives: Sequence[Path],
    data: TrainingSet,
    backend: Backend,
    settings: LearnSettings,
) -> tuple[Head, LearnReport]:
    """Calibrate and fit a head on embedded windows (:func:`build_training_set` of the same
    ``examples`` and ``negatives``): the fitting half of :func:`learn_head`, on its own so
    that one set of embeddings can serve several fits (``benchmarks/custom.py``)."""
    labels = list(examples)
    t_embedded = time.perf_counter()
    if settings.calibrate:
        thresholds, f1 = calibrate(data, len(labels), settings)
    else:
        thresholds, f1 = np.full(len(labels), 0.5, np.float32), np.zeros(len(labels), np.float32)
    fitted = fit(data.features, data.label, len(labels), settings)
    t_done = time.perf_counter()
    report = LearnReport(
        files={label: len(files) for label, files in examples.items()}
        | {"(negatives)": len(negatives)},
        windows={label: int((data.label == i).sum()) for i, label in enumerate(labels)}
        | {"(negatives)": int((data.label == NEGATIVE).sum())},
        thresholds={label: round(float(t), 3) for label, t in zip(labels, thresholds, strict=True)},
        heldout_f1={label: round(float(v), 3) for label, v in zip(labels, f1, strict=True)},
        seconds={
            "audio_and_embedding": round(data.seconds_embedding, 2),
            "fitting": round(t_done - t_embedded, 2),
        },
    )
    head = Head(
        name=name,
        labels=labels,
        thresholds=thresholds,
        mean=fitted.mean,
        scale=fitted.scale,
        weights=fitted.weights,
        biases=fitted.biases,
        backbone=Backbone(
            model=backend.model,
            weights_sha256=backend.weights_sha256,
            embedding_dim=backend.embedding_dim,
            window_s=settings.window_s,
            num_classes=backend.num_classes,
        ),
        info={
            "files": report.files,
            "windows": report.windows,
            "heldout_f1": report.heldout_f1,
            "hop_s": settings.hop_s,
            "copies": settings.copies,
            "hidden": settings.hidden,
            "learned_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        inputs=settings.inputs,
    )
    return head, report

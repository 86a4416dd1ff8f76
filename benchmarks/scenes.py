"""Event scenes for the events benchmark: generated on demand, tagged once, cached.

Scene sets are made by ``../shared/audio/make_scenes.py`` (the scenes-dev recipe) into a
cache directory outside the repository (``$SOUNDWATCH_CACHE/event-scenes``, else the user
cache directory): generated audio never goes into git. Each scene's mn04 window
probabilities and embeddings (windows placed as the pipeline's ``MelWindower`` places
them) are computed once and kept beside the audio as ``.npz``, so threshold sweeps are fast.

    .venv/bin/python benchmarks/scenes.py            # generate and tag every set
"""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.scoring import LabelledEvent  # noqa: E402
from soundwatch.dsp import logmel  # noqa: E402
from soundwatch.dsp.windows import FRAMES_PER_SECOND, MelWindower  # noqa: E402
from soundwatch.models import InferenceWorker, default_cache_dir  # noqa: E402

SHARED = REPO.parent / "shared"
MAKE_SCENES = SHARED / "audio" / "make_scenes.py"
SCENES_DEV = SHARED / "audio" / "scenes-dev"
WEIGHTS = SHARED / "models" / "mn04_as_mAP_432.pt"
BATCH = 32


@dataclass(frozen=True)
class SceneSet:
    """A set of generated scenes: ``make_scenes.py --clips CLIPS --seed SEED --scenes N``."""

    name: str
    clips: str
    seed: int
    scenes: int

    def directory(self, root: Path) -> Path:
        return root / f"{self.name}-{self.clips}-s{self.seed}-n{self.scenes}"


#: Tuning / validation sets: A uses only the first ESC-50 clip of each category, B only the
#: second, so thresholds tuned on one meet the other's recordings for the first time.
SET_A = SceneSet("A", "first", 1, 48)
SET_B = SceneSet("B", "second", 2, 48)


def scenes_root() -> Path:
    return default_cache_dir() / "event-scenes"


def generate(scene_set: SceneSet, root: Path | None = None) -> Path:
    """The directory of ``scene_set``, made with ``make_scenes.py`` unless it exists."""
    out = scene_set.directory(root or scenes_root())
    if (out / "ground_truth.csv").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        str(MAKE_SCENES),
        "--out",
        str(out),
        "--seed",
        str(scene_set.seed),
        "--scenes",
        str(scene_set.scenes),
        "--clips",
        scene_set.clips,
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return out


def read_truth(directory: Path) -> dict[str, list[LabelledEvent]]:
    """Ground truth of a scene directory: scene name -> its foreground events."""
    truth: dict[str, list[LabelledEvent]] = {}
    with open(directory / "ground_truth.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            event = LabelledEvent(
                row["esc50_category"], float(row["onset_s"]), float(row["offset_s"])
            )
            truth.setdefault(row["scene"], []).append(event)
    return dict(sorted(truth.items()))


def read_backgrounds(directory: Path) -> dict[str, str]:
    """Scene name -> its looped background category ('' for noise only)."""
    with open(directory / "scenes.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {r["scene"]: r["background_category"] for r in rows}


@dataclass
class Windows:
    """One recording's tagged windows: frames ``[start, stop)``, probabilities, embeddings."""

    starts: np.ndarray
    stops: np.ndarray
    probs: np.ndarray
    embeddings: np.ndarray


def tag_windows(wave: np.ndarray, worker: InferenceWorker, window: float, hop: float) -> Windows:
    """Tag ``wave`` with windows placed as the pipeline's ``MelWindower`` places them."""
    mel = logmel(wave)
    windower = MelWindower(round(window * FRAMES_PER_SECOND), round(hop * FRAMES_PER_SECOND))
    windows = windower.push(mel) + windower.flush()
    by_length: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        by_length.setdefault(w.mel.shape[1], []).append(i)
    probs = np.zeros((len(windows), worker.num_classes), dtype=np.float32)
    embeddings = np.zeros((len(windows), worker.embedding_dim), dtype=np.float32)
    for indices in by_length.values():
        for lo in range(0, len(indices), BATCH):
            chunk = indices[lo : lo + BATCH]
            p, e = worker.infer(np.stack([windows[i].mel for i in chunk]))
            probs[chunk] = p
            embeddings[chunk] = e
    starts = np.array([w.start for w in windows])
    stops = np.array([w.stop for w in windows])
    return Windows(starts, stops, probs, embeddings)


class WindowCache:
    """Window outputs per (scene file, window, hop): computed once, kept on disk when a
    cache directory is given (keyed by the model checkpoint's hash)."""

    def __init__(self, worker: InferenceWorker, cache_dir: Path | None) -> None:
        self.worker = worker
        self.cache_dir = cache_dir
        self.memory: dict[tuple[str, float, float], Windows] = {}
        self.seconds_tagging = 0.0
        self.key = hashlib.sha256(worker.loaded.sha256.encode()).hexdigest()[:12]

    def get(self, wav: Path, window: float, hop: float) -> Windows:
        key = (str(wav), window, hop)
        if key in self.memory:
            return self.memory[key]
        path = None
        if self.cache_dir is not None:
            tag = hashlib.sha256(str(wav.resolve()).encode()).hexdigest()[:8]
            path = self.cache_dir / f"{wav.stem}_{tag}_w{window}_h{hop}_{self.key}.npz"
            if path.exists():
                z = np.load(path)
                self.memory[key] = Windows(z["starts"], z["stops"], z["probs"], z["embeddings"])
                return self.memory[key]
        wave, rate = sf.read(wav, dtype="float32")
        assert rate == 32000, rate
        started = time.perf_counter()
        windows = tag_windows(wave, self.worker, window, hop)
        self.seconds_tagging += time.perf_counter() - started
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(
                path,
                starts=windows.starts,
                stops=windows.stops,
                probs=windows.probs,
                embeddings=windows.embeddings,
            )
        self.memory[key] = windows
        return windows


def main() -> None:
    from soundwatch.models import load_model

    loaded = load_model("mn04", WEIGHTS, download=False)
    worker = InferenceWorker(loaded, device="cpu", threads=2)
    cache = WindowCache(worker, scenes_root() / "windows")
    for scene_set in (SET_A, SET_B):
        directory = generate(scene_set)
        for scene in read_truth(directory):
            cache.get(directory / f"{scene}.wav", 3.0, 0.5)
        print(f"{scene_set.name}: {directory} ({cache.seconds_tagging:.0f} s tagging so far)")


if __name__ == "__main__":
    main()

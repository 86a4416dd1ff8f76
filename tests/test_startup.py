"""A start served from a cached ONNX export imports no torch (issue 12: start-up under 2 s).

One export of the real mn04 checkpoint into a temporary cache, made through the lazy path
(the checkpoint read only because the export needs it), serves every test here.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require_module, shared_file

from soundwatch.errors import SoundwatchError
from soundwatch.models import InferenceWorker, LoadedModel, load_model
from soundwatch.models import worker as worker_module
from soundwatch.models.onnx_backend import onnx_cache_path
from soundwatch.models.worker import device_type_without_torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights() -> Path:
    return shared_file("models/mn04_as_mAP_432.pt")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> Path:
    """A cache holding the mn04 export, made on a cache miss from a lazily read checkpoint."""
    require_module("onnxruntime")
    require_module("onnxscript")
    cache = tmp_path_factory.mktemp("cache")
    loaded = load_model("mn04", weights, download=False, lazy=True)
    assert not loaded.is_read
    worker = InferenceWorker(loaded, device="cpu", backend="onnx", cache_dir=cache)
    assert loaded.is_read  # the miss needed the torch module to export
    assert onnx_cache_path(cache, "mn04", loaded.sha256).is_file()
    assert worker.infer(np.zeros((2, 128, 300), np.float32))[0].shape == (2, 527)
    return cache


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 s of speech: three 3 s windows every 0.5 s."""
    import soundfile

    speech, rate = soundfile.read(shared_file("audio/clips/speech.wav"), dtype="float32")
    path = tmp_path_factory.mktemp("clip") / "speech4.wav"
    soundfile.write(path, speech[: 4 * rate], rate)
    return path


def test_run_from_a_cached_export_never_imports_torch(
    cache: Path, clip: Path, weights: Path, tmp_path: Path
) -> None:
    """``soundwatch run`` reaches its tags without importing torch (``-X importtime`` lists
    every import, a late one inside a function too), and its probabilities are those of
    the same export run the way that reads the checkpoint (1e-5) and of torch (1e-4)."""
    from soundwatch.runner import Tagger, tag_file

    command = [sys.executable, "-X", "importtime", "-m", "soundwatch.cli", "run"]
    command += ["--source", f"file:{clip}", "--pace", "fast", "--weights", str(weights)]
    command += ["--device", "cpu", "--backend", "auto", "--jsonl", "-"]
    command += ["--publish", f"ipc://{tmp_path / 'pub'}"]
    env = {**os.environ, "SOUNDWATCH_CACHE": str(cache)}
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
    assert "soundwatch.models.worker" in imported  # importtime output is there
    assert "onnxruntime" in imported
    assert [m for m in imported if m == "torch" or m.startswith("torch.")] == []
    assert "exporting" not in result.stderr  # the cached export was used
    records = [json.loads(line) for line in result.stdout.splitlines()]
    tags = [r for r in records if r["kind"] == "tags"]
    status = [r for r in records if r["kind"] == "status"]
    assert len(tags) == 3 and status and status[-1]["backend"].startswith("onnx/cpu")

    eager = load_model("mn04", weights, download=False)  # today's path: checkpoint read
    for backend, tolerance in (("onnx", 1e-5), ("torch", 1e-4)):
        worker = InferenceWorker(eager, device="cpu", backend=backend, cache_dir=cache)
        assert worker.backend == backend
        expected = tag_file(clip, Tagger(eager, worker), 3.0, 0.5).windows
        assert len(expected) == len(tags)
        for got, want in zip(tags, expected, strict=True):
            np.testing.assert_allclose(got["probs"], want.probs, atol=tolerance, rtol=0)


def test_cached_export_gives_sizes_without_reading_the_checkpoint(
    cache: Path, weights: Path
) -> None:
    loaded = load_model("mn04", weights, download=False, lazy=True)
    worker = InferenceWorker(loaded, device="cpu", backend="auto", cache_dir=cache)
    assert worker.backend == "onnx" and worker.device.type == "cpu"
    assert (worker.num_classes, worker.embedding_dim) == (527, 384)  # from the graph
    probs, embedding = worker.infer(np.zeros((1, 128, 100), np.float32))
    assert probs.shape == (1, 527) and embedding.shape == (1, 384)
    assert not loaded.is_read
    assert loaded.model.embedding_dim == 384  # asking for the module reads it then
    assert loaded.is_read


def test_corrupt_cached_export(
    weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A damaged export: an explicit ``onnx`` says which file to delete; ``auto`` falls
    back to torch (reading the checkpoint), as before the lazy start."""
    require_module("onnxruntime")
    loaded = load_model("mn04", weights, download=False, lazy=True)
    path = onnx_cache_path(tmp_path, "mn04", loaded.sha256)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an onnx graph")
    with pytest.raises(SoundwatchError, match=r"cannot load the ONNX model .*delete it"):
        InferenceWorker(loaded, device="cpu", backend="onnx", cache_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="soundwatch.models.worker"):
        worker = InferenceWorker(loaded, device="cpu", backend="auto", cache_dir=tmp_path)
    assert worker.backend == "torch" and loaded.is_read
    assert "backend auto uses torch" in caplog.text
    assert worker.infer(np.zeros((1, 128, 100), np.float32))[1].shape == (1, 384)


def test_device_is_decided_without_torch_only_without_a_gpu_driver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "GPU_DEVICE_FILES", (str(tmp_path / "nvidia0"),))
    assert device_type_without_torch("auto") == "cpu"
    assert device_type_without_torch("cpu") == "cpu"
    assert device_type_without_torch("cuda") is None
    (tmp_path / "nvidia0").touch()  # a driver is there: only torch can tell
    assert device_type_without_torch("auto") is None
    assert device_type_without_torch("cpu") == "cpu"


def test_lazy_loaded_model_keeps_the_eager_interface(weights: Path) -> None:
    """Code that builds a LoadedModel itself or swaps its module keeps working."""
    lazy = load_model("mn04", weights, download=False, lazy=True)
    copy = LoadedModel("mn04", None, lazy.labels, lazy.mids, lazy.weights_path, lazy.sha256)
    assert copy.num_classes == 527 and not copy.is_read
    module = copy.model
    assert not module.training
    lazy.model = module  # the setter, as benchmarks/custom.py does after fine-tuning
    assert lazy.is_read and lazy.model is module and lazy.embedding_dim == 384


def test_damaged_checkpoint_on_a_cache_miss_is_named(tmp_path: Path) -> None:
    """A lazy load only hashes the file; the miss that must export reads it and says that
    the checkpoint is damaged (not that ONNX Runtime is unusable)."""
    import shutil

    bad = tmp_path / "mn04_as_mAP_432.pt"
    bad.write_bytes(b"not a checkpoint")
    shutil.copy(shared_file("models/class_labels_indices.csv"), tmp_path)
    loaded = load_model("mn04", bad, download=False, lazy=True)
    with pytest.raises(SoundwatchError, match=r"cannot read .* as a PyTorch checkpoint"):
        InferenceWorker(loaded, device="cpu", backend="auto", cache_dir=tmp_path / "cache")

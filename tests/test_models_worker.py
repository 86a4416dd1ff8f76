"""InferenceWorker: torch and ONNX Runtime backends on the real mn04 checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_module

from soundwatch.errors import SoundwatchError
from soundwatch.models import InferenceWorker, LoadedModel, build_model, load_model
from soundwatch.models.blocks import BlockConfig
from soundwatch.models.dymn import DynamicInvertedResidual, DynamicSettings
from soundwatch.models.onnx_backend import OnnxTagger, export_module, onnx_cache_path
from soundwatch.models.worker import choose_backend

CLIPS = ["speech", "typing", "music", "metro_station-paris"]


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    from conftest import shared_file

    return load_model("mn04", shared_file("models/mn04_as_mAP_432.pt"), download=False)


@pytest.fixture(scope="module")
def clip_mels() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference mels ``[4, 128, 1000]`` with the reference probabilities and embeddings."""
    from conftest import shared_file

    ref = np.load(shared_file("golden/mn04_as_clips.npz"))
    mels = np.stack([ref[f"mel_{c}"] for c in CLIPS])
    probs = 1 / (1 + np.exp(-np.stack([ref[f"logits_{c}"] for c in CLIPS]).astype(np.float64)))
    embeddings = np.stack([ref[f"embedding_{c}"] for c in CLIPS])
    return mels, probs, embeddings


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def onnx_worker(loaded: LoadedModel, onnx_cache: Path) -> InferenceWorker:
    require_module("onnxruntime")
    require_module("onnxscript")
    return InferenceWorker(loaded, device="cpu", threads=2, backend="onnx", cache_dir=onnx_cache)


def test_torch_worker_matches_reference(loaded: LoadedModel, clip_mels) -> None:
    mels, ref_probs, ref_embeddings = clip_mels
    worker = InferenceWorker(loaded, device="auto")
    assert worker.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    probs, embeddings = worker.infer(mels)
    assert probs.dtype == embeddings.dtype == np.float32
    assert probs.shape == (4, 527) and embeddings.shape == (4, 384)
    np.testing.assert_allclose(probs, ref_probs, atol=1e-3, rtol=0)
    np.testing.assert_allclose(embeddings, ref_embeddings, atol=1e-3, rtol=0)
    # [B, 1, 128, T] is accepted too, and float64 input is converted
    probs4, _ = worker.infer(mels[:, None].astype(np.float64))
    np.testing.assert_allclose(probs4, probs, atol=1e-6, rtol=0)


def test_worker_windows_of_other_lengths(loaded: LoadedModel, clip_mels) -> None:
    worker = InferenceWorker(loaded, device="cpu")
    mels = clip_mels[0][:, :, :300]
    probs, _ = worker.infer(mels)
    with torch.inference_mode():
        logits, _ = loaded.model(torch.from_numpy(np.ascontiguousarray(mels[:, None])))
    np.testing.assert_allclose(probs, torch.sigmoid(logits).numpy(), atol=1e-6, rtol=0)
    empty_probs, empty_emb = worker.infer(np.zeros((0, 128, 300), np.float32))
    assert empty_probs.shape == (0, 527) and empty_emb.shape == (0, 384)
    worker.warmup(100)


@pytest.mark.parametrize(
    "bad, problem",
    [
        (np.zeros((2, 64, 100), np.float32), "128"),
        (np.zeros((128, 100), np.float32), "shape"),
        (np.zeros((1, 2, 128, 100), np.float32), "shape"),
        (np.zeros((1, 128, 0), np.float32), "at least one frame"),
        (np.zeros((1, 128, 100), np.int16), "floating point"),
        (np.full((1, 128, 100), np.nan, np.float32), "NaN"),
    ],
)
def test_worker_rejects_bad_batches(loaded: LoadedModel, bad: np.ndarray, problem: str) -> None:
    worker = InferenceWorker(loaded, device="cpu")
    with pytest.raises(SoundwatchError, match=problem):
        worker.infer(bad)


def test_worker_options_are_checked(loaded: LoadedModel) -> None:
    with pytest.raises(SoundwatchError, match="backend"):
        InferenceWorker(loaded, backend="tensorrt")
    with pytest.raises(SoundwatchError, match="threads"):
        InferenceWorker(loaded, threads=0)
    with pytest.raises(SoundwatchError, match="unknown device"):
        InferenceWorker(loaded, device="gpu0")
    with pytest.raises(SoundwatchError, match="CPU only"):
        InferenceWorker(loaded, device="cuda", backend="onnx")
    if not torch.cuda.is_available():
        with pytest.raises(SoundwatchError, match="CUDA is not available"):
            InferenceWorker(loaded, device="cuda")


def test_channels_last_matches(loaded: LoadedModel, clip_mels) -> None:
    mels = clip_mels[0][:2, :, :200]
    nhwc_worker = InferenceWorker(loaded, device="cpu")
    assert nhwc_worker.channels_last  # the default for MobileNets on the CPU
    nhwc = nhwc_worker.infer(mels)
    model = build_model("mn04")
    model.load_state_dict(loaded.model.state_dict())
    copy = LoadedModel(
        "mn04", model.eval(), loaded.labels, loaded.mids, loaded.weights_path, loaded.sha256
    )
    plain = InferenceWorker(copy, device="cpu", channels_last=False).infer(mels)
    np.testing.assert_allclose(nhwc[0], plain[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(nhwc[1], plain[1], atol=1e-4, rtol=0)


def test_onnx_backend_matches_torch(
    onnx_worker: InferenceWorker, loaded: LoadedModel, clip_mels
) -> None:
    mels = clip_mels[0]
    torch_worker = InferenceWorker(loaded, device="cpu")
    # batch and time are dynamic, down to the one-frame window of a 10 ms stream
    for batch in (
        mels,
        mels[:1, :, :100],
        mels[:3, :, :537],
        *(mels[:2, :, :t] for t in (1, 2, 32)),
    ):
        probs, emb = onnx_worker.infer(batch)
        expected_probs, expected_emb = torch_worker.infer(batch)
        assert probs.dtype == np.float32 and probs.shape == expected_probs.shape
        np.testing.assert_allclose(probs, expected_probs, atol=1e-4, rtol=0)
        np.testing.assert_allclose(emb, expected_emb, atol=1e-3, rtol=0)


def test_onnx_export_is_cached_by_checkpoint(
    onnx_worker: InferenceWorker, loaded: LoadedModel, onnx_cache: Path
) -> None:
    path = onnx_cache_path(onnx_cache, "mn04", loaded.sha256)
    assert path.is_file() and loaded.sha256[:16] in path.name
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left
    mtime = path.stat().st_mtime_ns
    again = InferenceWorker(loaded, device="cpu", backend="onnx", cache_dir=onnx_cache)
    assert path.stat().st_mtime_ns == mtime  # reused, not exported again
    assert again.infer(np.zeros((1, 128, 100), np.float32))[0].shape == (1, 527)


def test_onnx_missing_gives_install_hint(
    loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(SoundwatchError, match=r"pip install soundwatch\[onnx\]"):
        InferenceWorker(loaded, backend="onnx", cache_dir=tmp_path)


def test_auto_backend_runs_mobilenets_in_onnx_runtime_on_the_cpu(
    loaded: LoadedModel, onnx_cache: Path, clip_mels
) -> None:
    require_module("onnxruntime")
    require_module("onnxscript")
    worker = InferenceWorker(loaded, device="cpu", backend="auto", cache_dir=onnx_cache)
    assert worker.backend == "onnx"
    mels, expected_probs, _ = clip_mels
    np.testing.assert_allclose(worker.infer(mels[:1])[0], expected_probs[:1], atol=1e-4, rtol=0)


def test_auto_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_backend("auto", "dymn04", cpu) == "torch"  # slower in ONNX Runtime
    assert choose_backend("auto", "mn10", cuda) == "torch"  # float16 on the GPU
    assert choose_backend("onnx", "dymn04", cpu) == "onnx"  # an explicit choice stands
    with pytest.raises(SoundwatchError, match=r"unknown backend 'tvm'.*auto, torch, onnx"):
        choose_backend("tvm", "mn04", cpu)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed
    assert choose_backend("auto", "mn04", cpu) == "torch"


def test_dynamic_block_exports_to_onnx(tmp_path: Path) -> None:
    """A DyMN block (dynamic 1x1 and depthwise convs, dynamic ReLU, coordinate attention,
    stride 2) exports with dynamic batch and time and agrees with torch.

    (A whole DyMN exports the same way, but takes about a minute; benchmarks/models.py
    checks whole-model ONNX parity for every model it times.)"""
    require_module("onnxruntime")
    require_module("onnxscript")
    torch.manual_seed(3)
    cfg = BlockConfig(16, 5, 48, 24, use_se=False, activation="HS", stride=2)
    block = DynamicInvertedResidual(cfg, 0.4, DynamicSettings(temperature=1.0))
    for module in block.modules():  # non-trivial normalisation statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    block.eval()
    path = export_module(
        block,
        torch.randn(2, 16, 32, 40),
        tmp_path / "block.onnx",
        input_name="x",
        output_names=("y",),
        dynamic_axes={0: torch.export.Dim("b", min=1), 3: torch.export.Dim("t", min=8)},
    )
    tagger = OnnxTagger(path, threads=1)
    for shape in [(3, 16, 32, 57), (1, 16, 32, 12)]:
        x = torch.randn(*shape)
        with torch.inference_mode():
            expected = block(x).numpy()
        (got,) = tagger.run_raw(x.numpy())
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)

"""Batched inference over mel windows from any number of streams."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from soundwatch.errors import SoundwatchError
from soundwatch.model_catalog import model_spec
from soundwatch.models.loader import LoadedModel
from soundwatch.models.onnx_backend import OnnxTagger, ensure_export, onnx_cache_path
from soundwatch.models.weights import default_cache_dir

if TYPE_CHECKING:  # torch is imported when the torch backend runs or CUDA must be asked
    import torch
    from torch import nn

log = logging.getLogger(__name__)

Backend = Literal["torch", "onnx"]
BACKENDS = ("auto", "torch", "onnx")
N_MELS = 128

GPU_DEVICE_FILES = ("/proc/driver/nvidia/version", "/dev/nvidia0", "/dev/kfd")
"""Present where torch might find a GPU (NVIDIA's driver; ``/dev/kfd``: AMD ROCm). Without
any of them ``device: auto`` is the CPU, decided without importing torch."""


@dataclass(frozen=True)
class OnnxDevice:
    """Where the ONNX Runtime backend runs: the CPU (``.type`` as ``torch.device`` has it;
    no torch needed)."""

    type: str = "cpu"

    def __str__(self) -> str:
        return self.type


def certainly_no_gpu() -> bool:
    """True when no GPU driver is visible, so CUDA cannot be available (torch not asked)."""
    return not any(Path(p).exists() for p in GPU_DEVICE_FILES)


def device_type_without_torch(device: str) -> str | None:
    """``"cpu"`` when ``device`` is certainly the CPU (``cpu``, or ``auto`` without a GPU
    driver); None when only torch can tell."""
    if device == "cpu" or (device == "auto" and certainly_no_gpu()):
        return "cpu"
    return None


def onnxruntime_available() -> bool:
    """Whether the optional ONNX Runtime backend can run (onnxruntime and onnxscript)."""
    import importlib.util

    try:
        return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnxscript"))
    except ValueError:  # a module set to None in sys.modules: not importable
        return False


def choose_backend(backend: str, model_name: str, device: torch.device | str) -> Backend:
    """``auto`` -> the fastest correct backend measured for this model and device.

    ONNX Runtime on the CPU for the MobileNets (``mn*``: 1.5-6x eager torch per window,
    docs/performance.md), when it is installed; torch for DyMN (its dynamic convolutions run
    slower in ONNX Runtime at batch 8 and more) and on CUDA (float16 autocast).
    """
    if backend not in BACKENDS:
        raise SoundwatchError(f"unknown backend {backend!r}; use one of: {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend  # type: ignore[return-value]
    device_type = device if isinstance(device, str) else device.type
    if device_type == "cpu" and model_spec(model_name).family == "mn" and onnxruntime_available():
        return "onnx"
    return "torch"


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise SoundwatchError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SoundwatchError(
            f"device {device!r} requested but CUDA is not available; use 'auto' or 'cpu'"
        )
    return resolved


def as_model_batch(mels: np.ndarray) -> np.ndarray:
    """Validate a mel batch and return it as contiguous float32 ``[B, 1, 128, T]``."""
    arr = np.asarray(mels)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1] != 1 or arr.shape[2] != N_MELS:
        raise SoundwatchError(
            f"mel batch must be [batch, {N_MELS}, frames] or [batch, 1, {N_MELS}, frames], "
            f"got shape {tuple(np.shape(mels))}"
        )
    if arr.shape[3] < 1:
        raise SoundwatchError("mel windows must have at least one frame")
    if not np.issubdtype(arr.dtype, np.floating):
        raise SoundwatchError(f"mel batch must be floating point, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise SoundwatchError("mel batch contains NaN or infinite values")
    return arr


class InferenceWorker:
    """Runs a :class:`LoadedModel` on batches of mel windows.

    ``device="auto"`` uses CUDA (float16 autocast) when available, else the CPU in
    float32. ``backend="auto"`` picks the fastest correct backend (:func:`choose_backend`);
    :attr:`backend` says which. ``threads`` sets the CPU thread count
    (``torch.set_num_threads``, which is process-wide; onnxruntime: intra-op threads of this
    session). ``backend="onnx"`` runs an ONNX Runtime CPU session exported from the model
    and cached in ``cache_dir``.
    ``channels_last`` stores activations NHWC in the CPU torch backend; ``None`` (default)
    turns it on for the MobileNets, where it measured 1.5-1.7x faster, and off for DyMN,
    where it does not help (see docs/performance.md).

    Torch is imported only when needed: an ONNX worker (explicit, or ``auto`` on a machine
    with no GPU driver) whose export is cached runs without it, and without reading the
    checkpoint when ``loaded`` was made with ``load_model(..., lazy=True)``.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        device: str = "auto",
        threads: int | None = None,
        backend: str = "torch",
        *,
        channels_last: bool | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise SoundwatchError(f"unknown backend {backend!r}; use one of: {', '.join(BACKENDS)}")
        auto = backend == "auto"
        if auto:
            device_type = device_type_without_torch(device) or resolve_device(device).type
            backend = choose_backend(backend, loaded.name, device_type)
        if threads is not None and threads < 1:
            raise SoundwatchError(f"threads must be at least 1, got {threads}")
        self.loaded = loaded
        self.backend: Backend = backend  # type: ignore[assignment]
        self.threads = threads
        self.device: torch.device | OnnxDevice
        self._onnx: OnnxTagger | None = None
        self.channels_last = False
        if backend == "onnx":
            if device not in ("auto", "cpu"):
                raise SoundwatchError(
                    f"backend 'onnx' runs on the CPU only; use device 'cpu' or 'auto', "
                    f"or backend 'torch' for {device!r}"
                )
            self.device = OnnxDevice()
            cache = cache_dir if cache_dir is not None else default_cache_dir()
            if not onnx_cache_path(cache, loaded.name, loaded.sha256).is_file():
                _ = loaded.model  # a miss exports: a damaged checkpoint fails here, as such
            try:
                self._onnx = self._open_onnx(cache)
            except Exception as error:  # auto falls back to torch; an explicit choice fails
                if not auto:
                    raise
                log.warning("ONNX Runtime unusable (%s); backend auto uses torch", error)
                self.backend = backend = "torch"
        if backend == "torch":
            self._setup_torch(device, channels_last)

    def _open_onnx(self, cache: Path) -> OnnxTagger:
        """An ONNX Runtime session of this checkpoint's export cached in ``cache`` (made
        first on a cache miss); the output sizes come from the graph."""
        loaded = self.loaded
        path = ensure_export(lambda: loaded.model.to("cpu"), loaded.name, loaded.sha256, cache)
        session = OnnxTagger(path, self.threads)
        classes = session.output_width(0)
        if classes != loaded.num_classes:
            raise SoundwatchError(
                f"the ONNX model {path} has {classes} outputs but {loaded.name} has "
                f"{loaded.num_classes} labels; delete it to export it again"
            )
        loaded.know_embedding_dim(session.output_width(1))
        return session

    def _setup_torch(self, device: str, channels_last: bool | None) -> None:
        """Torch backend: the model on its device, threads, memory format."""
        import torch

        self.device = resolve_device(device)
        if self.threads is not None and self.device.type == "cpu":
            torch.set_num_threads(self.threads)
        model = self.loaded.model.eval()
        model.to(self.device)
        if channels_last is None:
            channels_last = model_spec(self.loaded.name).family == "mn"
        self.channels_last = channels_last and self.device.type == "cpu"
        if self.channels_last:
            model.to(memory_format=torch.channels_last)

    @property
    def model(self) -> nn.Module:
        """The torch module (reading the checkpoint if the ONNX backend has not needed it)."""
        return self.loaded.model

    @property
    def num_classes(self) -> int:
        return self.loaded.num_classes

    @property
    def embedding_dim(self) -> int:
        return self.loaded.embedding_dim

    def infer(self, mels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mel windows ``[B, 128, T]`` (or ``[B, 1, 128, T]``) -> (probabilities, embeddings).

        Returns float32 ``[B, num_classes]`` sigmoid probabilities and ``[B, D]`` embeddings.
        All windows of one call must have the same length ``T``.
        """
        batch = as_model_batch(mels)
        if batch.shape[0] == 0:
            return (
                np.zeros((0, self.num_classes), np.float32),
                np.zeros((0, self.embedding_dim), np.float32),
            )
        if self._onnx is not None:
            probs, embedding = self._onnx.run(batch)
            return probs.astype(np.float32, copy=False), embedding.astype(np.float32, copy=False)
        return self._infer_torch(batch)

    def _infer_torch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    logits, embedding = self.loaded.model(x)
            else:
                logits, embedding = self.loaded.model(x)
            probs = torch.sigmoid(logits.float())
        return probs.cpu().numpy(), embedding.float().cpu().numpy()

    def warmup(self, frames: int, batch: int = 1) -> None:
        """Run ``batch`` dummy windows of ``frames`` frames (first-call allocations, kernel
        picks). A live run warms up at its largest batch: ONNX Runtime's memory arena grows
        to the largest batch it has seen and keeps that, so growing it before the first
        stream keeps the resident size flat afterwards (docs/performance.md)."""
        self.infer(np.zeros((batch, N_MELS, frames), np.float32))

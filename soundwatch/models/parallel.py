"""Forward passes on every core: one batch split into chunks run at the same time.

The pipeline runs one forward pass at a time on its inference thread. ONNX Runtime's own
intra-op threads barely help at the batch sizes a live run makes (measured: about one core
used however many threads it has), so on a machine with N cores :class:`ParallelInfer`
splits a pass into up to N chunks of consecutive windows, runs them at once (one on the
calling thread, the others on worker threads; ONNX Runtime and torch release the GIL while
they compute, and one ONNX Runtime session may be run from several threads) and
concatenates the outputs in order. To the caller it is still one call: it returns when
every chunk has, and raises the first chunk's error if any failed, so a failed pass
loses all its windows at once and the pipeline's watchdog times the whole pass.
Measured in ``benchmarks/parallel_inference.py`` (docs/performance.md).

numpy and the standard library only: no torch here (the wrapper runs any ``infer``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from itertools import pairwise
from queue import SimpleQueue

import numpy as np

from soundwatch.errors import SoundwatchError

InferFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

MIN_CHUNK = 1
"""Fewest windows per chunk: every pass of two or more windows is split. Measured on 2 idle
cores (benchmarks/parallel_inference.py): even two windows as two chunks of one ran 1.6x
(mn04) and 2.0x (mn10) faster than one pass, at the same CPU time per window within 5%."""

MAX_PARALLEL = 256

CLOSE_TIMEOUT_S = 5.0
"""How long :meth:`ParallelInfer.close` waits for the worker threads in all (a chunk in
flight finishes well within it; a hung one is left behind)."""

_Task = tuple[Future, InferFn, np.ndarray]


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. under taskset or a
    container's cpuset), not every core of the machine."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity call on this platform
        return max(1, os.cpu_count() or 1)


def resolve_parallel(setting: int | str, *, device: str, engine: str = "local") -> int:
    """``model.parallel`` -> how many chunks a forward pass is split into.

    ``auto``: the usable cores on the CPU; 1 on CUDA (one batch keeps the GPU busy) and with
    the Ray engine (it already splits a pass into requests). A number is used as given.
    """
    if setting == "auto":
        if device != "cpu" or engine != "local":
            return 1
        return usable_cores()
    if (
        isinstance(setting, bool)
        or not isinstance(setting, int)
        or not 1 <= setting <= MAX_PARALLEL
    ):
        raise SoundwatchError(
            f"model.parallel must be 'auto' or a whole number from 1 to {MAX_PARALLEL}, "
            f"got {setting!r}"
        )
    return setting


def chunk_bounds(size: int, chunks: int, min_chunk: int = MIN_CHUNK) -> list[int]:
    """Where a batch of ``size`` windows is cut: at most ``chunks`` near-equal chunks of at
    least ``min_chunk`` windows each (one chunk when the batch is too small to split)."""
    count = max(1, min(chunks, size // max(1, min_chunk)))
    return [size * i // count for i in range(count + 1)]


class ParallelInfer:
    """``infer(mels [B, ...]) -> (probs [B, C], embeddings [B, D])`` run as up to
    ``chunks`` concurrent calls on consecutive slices of the batch, outputs in order.

    The first chunk runs on the calling thread, chunk ``i`` always on worker thread
    ``forward-i``. The workers are daemon threads, so a chunk that never returns (a hung
    device, which the pipeline's watchdog gives up on) cannot keep the process from
    exiting, and :meth:`close` does not wait for it. ``chunks=1`` calls ``infer`` directly.
    """

    def __init__(self, infer: InferFn, chunks: int, min_chunk: int = MIN_CHUNK) -> None:
        if chunks < 1:
            raise SoundwatchError(f"chunks must be at least 1, got {chunks}")
        if min_chunk < 1:
            raise SoundwatchError(f"min_chunk must be at least 1, got {min_chunk}")
        self.infer = infer
        self.chunks = chunks
        self.min_chunk = min_chunk
        self._inboxes: list[SimpleQueue[_Task | None]] = []
        self._workers: list[threading.Thread] = []
        for index in range(1, chunks):
            inbox: SimpleQueue[_Task | None] = SimpleQueue()
            worker = threading.Thread(
                target=_work, args=(inbox,), name=f"forward-{index}", daemon=True
            )
            worker.start()
            self._inboxes.append(inbox)
            self._workers.append(worker)
        self.split_passes = 0  # passes that ran as more than one chunk

    def __call__(self, mels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bounds = chunk_bounds(len(mels), self.chunks, self.min_chunk)
        if len(bounds) <= 2 or not self._inboxes:  # too small to split, or closed
            return self.infer(mels)
        self.split_passes += 1
        futures: list[Future[tuple[np.ndarray, np.ndarray]]] = []
        for inbox, (start, stop) in zip(self._inboxes, pairwise(bounds[1:]), strict=False):
            future: Future[tuple[np.ndarray, np.ndarray]] = Future()
            inbox.put((future, self.infer, mels[start:stop]))
            futures.append(future)
        try:
            first = self.infer(mels[bounds[0] : bounds[1]])
        finally:
            wait(futures)  # never return (or raise) while a chunk still runs
        parts = [first, *(future.result() for future in futures)]  # the first error raises
        probs = np.concatenate([p for p, _ in parts])
        embeddings = np.concatenate([e for _, e in parts])
        return probs, embeddings

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Let the worker threads end after the chunk each runs, waiting for them at most
        ``timeout`` s in all: a stopped run leaves no thread behind, and a hung chunk's
        thread (a daemon) is left after the wait instead of holding the caller up."""
        for inbox in self._inboxes:
            inbox.put(None)
        self._inboxes = []
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self._workers = []


def _work(inbox: SimpleQueue[_Task | None]) -> None:
    """A worker thread: run the chunks put in its inbox until ``None``."""
    while (task := inbox.get()) is not None:
        future, infer, mels = task
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(infer(mels))
            except BaseException as error:  # the caller re-raises it
                future.set_exception(error)


def session_threads(threads: int | None, parallel: int | str) -> int | None:
    """Runtime (ONNX Runtime, torch) threads per forward pass: ``model.threads`` when set;
    else 1 when passes may be split (``model.parallel`` not 1): each chunk is one thread,
    and a runtime pool per chunk would oversubscribe the cores; else the runtime's default."""
    if threads is not None:
        return threads
    return None if parallel == 1 else 1

"""Forward passes split into concurrent chunks (``soundwatch.models.parallel``): the same
results as one pass, in order; a failed chunk fails its whole pass once; the setting is
checked and shown in status."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_file
from test_pipeline_flow import ScriptedSource, zeros_infer

from soundwatch.config import Config, apply_overrides
from soundwatch.errors import SoundwatchError
from soundwatch.models.parallel import (
    MIN_CHUNK,
    ParallelInfer,
    chunk_bounds,
    resolve_parallel,
    session_threads,
    usable_cores,
)
from soundwatch.pipeline import Collector, Pipeline


class Recording:
    """Wraps an infer function; records each call's size and thread. ``barrier``: every
    call waits there first, so a pass whose chunks do not run at once breaks it."""

    def __init__(self, infer, barrier: threading.Barrier | None = None) -> None:
        self.infer = infer
        self.barrier = barrier
        self.calls: list[tuple[int, str]] = []
        self._lock = threading.Lock()

    def __call__(self, mels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            self.calls.append((len(mels), threading.current_thread().name))
        if self.barrier is not None:
            self.barrier.wait(timeout=30)
        return self.infer(mels)


def window_sums(mels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A stand-in model whose outputs identify each window."""
    sums = mels.reshape(len(mels), -1).sum(axis=1, dtype=np.float64)
    return np.stack([sums, -sums], axis=1), sums[:, None] * np.arange(1, 4)


def test_chunk_bounds_split_evenly_never_under_the_minimum() -> None:
    assert chunk_bounds(9, 2, 4) == [0, 4, 9]
    assert chunk_bounds(13, 3, 4) == [0, 4, 8, 13]
    assert chunk_bounds(64, 2, 4) == [0, 32, 64]
    assert chunk_bounds(7, 2, 4) == [0, 7]  # two chunks would leave one under 4 windows
    assert chunk_bounds(11, 4, 4) == [0, 5, 11]
    assert chunk_bounds(1, 8, 1) == [0, 1]
    assert chunk_bounds(0, 2, 4) == [0, 0]


def test_chunks_run_at_once_and_come_back_in_order() -> None:
    """Chunks of one pass meet at a barrier (they run concurrently, one on the calling
    thread) and the outputs are exactly the serial pass's, in the batch's order."""
    rng = np.random.default_rng(0)
    recording = Recording(window_sums, threading.Barrier(3))
    parallel = ParallelInfer(recording, 3, min_chunk=2)
    try:
        mels = rng.standard_normal((11, 128, 5)).astype(np.float32)
        probs, embeddings = parallel(mels)
        expected = window_sums(mels)
        np.testing.assert_array_equal(probs, expected[0])
        np.testing.assert_array_equal(embeddings, expected[1])
        assert sorted(n for n, _ in recording.calls) == [3, 4, 4]
        threads = {name for _, name in recording.calls}
        assert len(threads) == 3 and threading.current_thread().name in threads
        assert parallel.split_passes == 1
    finally:
        parallel.close()


def test_batches_under_the_minimum_stay_one_call_on_the_calling_thread() -> None:
    recording = Recording(window_sums)
    parallel = ParallelInfer(recording, 4, min_chunk=4)
    try:
        for size in (1, 7):
            mels = np.ones((size, 128, 5), np.float32)
            np.testing.assert_array_equal(parallel(mels)[0], window_sums(mels)[0])
        assert recording.calls == [(1, "MainThread"), (7, "MainThread")]
        assert parallel.split_passes == 0
    finally:
        parallel.close()
    assert MIN_CHUNK == 1 and chunk_bounds(2, 2) == [0, 1, 2]  # by default two windows split


@pytest.fixture(scope="module")
def onnx_tagger():
    """mn04 (real weights) in ONNX Runtime on the CPU, as ``run`` builds it with
    ``model.parallel: 2`` (one intra-op thread per chunk)."""
    from conftest import require_module

    require_module("onnxruntime")
    require_module("onnxscript")
    from soundwatch.runner import Tagger

    config = apply_overrides(Config(), {**model_keys(), "model.parallel": 2})
    tagger = Tagger.from_config(config)
    assert tagger.worker.threads == 1
    return tagger


def model_keys() -> dict:
    return {
        "model.weights": str(shared_file("models/mn04_as_mAP_432.pt")),
        "model.backend": "onnx",
        "model.device": "cpu",
    }


def test_the_real_model_gives_the_serial_results_when_split(onnx_tagger) -> None:
    """mn04 in ONNX Runtime, one session run from several threads: batches that split
    unevenly (9 -> 4 + 5, 13 -> 4 + 4 + 5) and one under the minimum match one pass."""
    worker = onnx_tagger.worker
    recording = Recording(worker.infer)
    parallel = ParallelInfer(recording, 3, min_chunk=4)
    rng = np.random.default_rng(1)
    try:
        for size, chunks in ((9, [4, 5]), (13, [4, 4, 5]), (5, [5])):
            recording.calls.clear()
            mels = (rng.standard_normal((size, 128, 300)) - 4).astype(np.float32)
            probs, embeddings = parallel(mels)
            serial_probs, serial_embeddings = worker.infer(mels)
            assert sorted(n for n, _ in recording.calls) == chunks
            assert probs.shape == (size, 527) and embeddings.shape == (size, 384)
            np.testing.assert_allclose(probs, serial_probs, rtol=0, atol=1e-5)
            np.testing.assert_allclose(embeddings, serial_embeddings, rtol=1e-4, atol=1e-4)
    finally:
        parallel.close()


class FailOneChunk:
    """Around a ParallelInfer of two chunks: from the ``fail_from``-th pass on, the first
    pass that splits fails in its pool chunk only; the whole pass's size is remembered."""

    def __init__(self, fail_from: int) -> None:
        self.fail_from = fail_from
        self.passes = 0
        self.armed = False
        self.failed_windows = 0
        self.chunk_calls = 0
        self.parallel = ParallelInfer(self.chunk, 2, min_chunk=1)

    def chunk(self, mels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.chunk_calls += 1
        if self.armed and threading.current_thread().name.startswith("forward"):
            raise RuntimeError("one chunk's forward pass failed")
        return zeros_infer(mels)

    def __call__(self, mels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.passes += 1
        self.armed = self.passes >= self.fail_from and not self.failed_windows and len(mels) > 1
        try:
            return self.parallel(mels)
        except RuntimeError:
            self.failed_windows = len(mels)
            raise
        finally:
            self.armed = False


def test_a_failed_chunk_fails_its_whole_pass_once_and_the_streams_go_on() -> None:
    """The pipeline sees one failed pass: every window of it (both chunks') counted in
    ``windows_failed``, one inference failure, the rest delivered."""
    infer = FailOneChunk(fail_from=3)
    sources = [ScriptedSource(name, blocks=60, waits=True) for name in ("a", "b", "c")]
    collector = Collector()
    try:
        pipeline = Pipeline(sources, infer, [collector], window_s=1.0, hop_s=0.5, max_batch=4)
        pipeline.run()
    finally:
        infer.parallel.close()
    assert not pipeline.errors
    assert pipeline.fault_counters()["inference_failures"] == 1
    assert infer.failed_windows > 1  # a split pass: the chunk that ran fine is lost with it
    failed = 0
    for state in pipeline.streams:
        counters = state.report().counters
        delivered = [r for r in collector.results if r.stream == state.id]
        assert counters["windows_failed"] + len(delivered) == 11, state.id  # 6 s of 1 s / 0.5 s
        assert delivered[-1].start_frame == 500
        failed += counters["windows_failed"]
    assert failed == infer.failed_windows


def test_parallel_setting_resolves_per_device_and_engine() -> None:
    assert resolve_parallel("auto", device="cpu") == usable_cores() >= 1
    assert resolve_parallel("auto", device="cuda") == 1
    assert resolve_parallel("auto", device="cpu", engine="ray") == 1
    assert resolve_parallel(3, device="cuda") == 3  # a number is used as given
    with pytest.raises(SoundwatchError, match=r"'auto' or a whole number from 1 to 256"):
        resolve_parallel(0, device="cpu")
    assert session_threads(None, "auto") == 1  # one runtime thread per chunk
    assert session_threads(None, 1) is None  # one pass: the runtime's default
    assert session_threads(3, "auto") == 3  # model.threads stands


@pytest.mark.parametrize("value", [0, 257, -2, "many", 1.5, True])
def test_bad_parallel_values_are_refused_with_what_is_allowed(value: object) -> None:
    with pytest.raises(SoundwatchError) as caught:
        apply_overrides(Config(), {"model.parallel": value})
    message = str(caught.value)
    assert "model.parallel" in message and "'auto'" in message and "1 to 256" in message
    assert repr(value) in message or str(value) in message


def test_the_flag_value_is_read_as_a_number() -> None:
    assert apply_overrides(Config(), {"model.parallel": "2"}).model.parallel == 2
    assert Config().model.parallel == "auto"


def test_status_shows_the_chunks_and_split_passes_give_the_same_tags(
    tmp_path: Path, shared, onnx_tagger
) -> None:
    """``soundwatch run`` on a file with ``model.parallel: 2`` and ``1``: status says
    ``onnx/cpu x2`` (and ``onnx/cpu``), and every window's probabilities are the same. (How
    the fast-paced file's windows are batched varies from run to run, so whether a pass is
    split here is not fixed; the real model's split passes are checked above.)"""
    from soundwatch.runner import run_live

    speech = shared("audio/clips/speech.wav")
    base = {
        **model_keys(),
        "sources": [{"id": "talk", "spec": f"file:{speech}"}],
        "pipeline.pace": "fast",
        "pipeline.gate": {"enabled": False},
        "publish.endpoints": [],
    }
    runs = {}
    for parallel in (2, 1):
        out = tmp_path / f"parallel-{parallel}.jsonl"
        config = apply_overrides(
            Config(), {**base, "model.parallel": parallel, "publish.jsonl": str(out)}
        )
        run_live(config, tagger=onnx_tagger, install_signal_handlers=False)
        runs[parallel] = [json.loads(line) for line in out.read_text().splitlines()]
    for parallel, backend in ((2, "onnx/cpu x2"), (1, "onnx/cpu")):
        statuses = [m for m in runs[parallel] if m["kind"] == "status"]
        assert statuses and all(m["backend"] == backend for m in statuses)

    def tags(messages: list[dict]) -> np.ndarray:
        return np.array([m["probs"] for m in messages if m["kind"] == "tags"])

    split_probs, serial_probs = tags(runs[2]), tags(runs[1])
    assert split_probs.shape == serial_probs.shape == (15, 527)  # 10 s: 3 s windows every 0.5 s
    np.testing.assert_allclose(split_probs, serial_probs, rtol=0, atol=1e-5)


def test_a_hung_chunk_is_timed_by_the_watchdog_and_holds_nothing_up() -> None:
    """A chunk that never returns keeps its pass running: the watchdog reports it and ends
    the run past the deadline; closing waits for the hung chunk only up to its timeout,
    and its daemon thread cannot keep the process from exiting."""
    release = threading.Event()

    def chunk(mels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if threading.current_thread().name.startswith("forward"):
            release.wait()
        return zeros_infer(mels)

    parallel = ParallelInfer(chunk, 2, min_chunk=1)
    sources = [ScriptedSource(name, blocks=10_000, waits=True) for name in ("a", "b")]
    pipeline = Pipeline(
        sources,
        parallel,
        [],
        window_s=1.0,
        hop_s=0.1,
        max_pending_windows=4,
        inference_timeout=0.2,
        inference_deadline=1.0,
    )
    try:
        with pytest.raises(SoundwatchError, match=r"a forward pass has not returned after"):
            pipeline.run(shutdown_timeout=30)
        assert pipeline.faults.inference_stalls == 1
        closing = threading.Thread(target=parallel.close, args=(0.5,))  # waits 0.5 s at most
        closing.start()
        closing.join(timeout=30)
        assert not closing.is_alive() and not release.is_set()
        workers = [t for t in threading.enumerate() if t.name.startswith("forward")]
        assert workers and all(t.daemon for t in workers)
    finally:
        release.set()


def test_closing_leaves_no_worker_thread_behind() -> None:
    """After close, every worker has ended (a stopped run reports no threads left)."""
    before = set(threading.enumerate())  # other tests' wrappers may still be winding down
    parallel = ParallelInfer(zeros_infer, 3, min_chunk=1)
    parallel(np.ones((6, 128, 5), np.float32))
    workers = [t for t in threading.enumerate() if t not in before and t.name.startswith("forward")]
    assert len(workers) == 2
    parallel.close()
    assert not any(t.is_alive() for t in workers)


def test_a_closed_wrapper_runs_whole_passes() -> None:
    recording = Recording(window_sums)
    parallel = ParallelInfer(recording, 2)
    parallel.close()
    mels = np.ones((16, 128, 5), np.float32)
    np.testing.assert_array_equal(parallel(mels)[1], window_sums(mels)[1])
    assert recording.calls == [(16, "MainThread")]

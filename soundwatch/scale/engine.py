"""``RayEngine``: the pipeline's ``infer(batch)`` as a client of a Ray Serve deployment.

The pipeline hands one batch of mel windows per forward pass. The engine cuts it into chunks
(at least one per running replica, at most ``chunk_windows`` windows each), sends them all at
once so several replicas work together, and gathers the answers in the batch's order: every
window's result goes back to its own place, so each stream's windows stay in time order
whatever replica served them.

A chunk whose replica dies (or that does not answer within ``timeout_s``) is sent once more;
Ray Serve routes it to a replica that is alive. If that fails too, ``infer`` raises
:class:`ChunkLost` and the pipeline's failure path counts the pass's windows as lost
(``windows_failed`` per stream, ``inference_failures``); the stream carries on. The engine's
own counters (:meth:`RayEngine.counters`) go into every status message's ``inference`` field.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import math
import os
import socket
import threading
import time
from typing import Any

import numpy as np
import torch

from soundwatch.errors import SoundwatchError
from soundwatch.models import LoadedModel
from soundwatch.models.worker import N_MELS
from soundwatch.scale.config import InferenceConfig, ReplicaRange

log = logging.getLogger(__name__)

#: Seconds between polls of the deployment's running replicas (for chunking and status).
REPLICA_POLL_S = 1.0
#: Seconds to reach a cluster address before saying nothing answers there.
CONNECT_TIMEOUT_S = 5.0


_ENGINES = itertools.count(1)


def app_prefix(pid: int | None = None) -> str:
    """The start of this process's Serve application names (one application per engine, so
    runs sharing a cluster never replace each other's): ``soundwatch-HOST-PID-``."""
    return f"soundwatch-{socket.gethostname()}-{pid if pid is not None else os.getpid()}-"


def require_ray() -> None:
    """Import Ray Serve, or say how to install the optional extra."""
    try:
        import ray.serve  # noqa: F401
    except ImportError:
        raise SoundwatchError(
            "--engine ray needs Ray Serve, which is not installed: pip install "
            "'soundwatch[ray]' (or use --engine local)"
        ) from None


class ChunkLost(RuntimeError):
    """A chunk failed on two replicas: the pipeline counts its pass's windows as lost."""


def connect(address: str) -> bool | None:
    """Connect this process to Ray: True when it started a local Ray (stopped on close),
    False when it joined a cluster (left on close), None when it was already connected
    (the connection is the caller's).

    ``local`` starts a head on this machine, ``auto`` joins the cluster this machine is part
    of (``ray start``), anything else is a cluster address (HOST:PORT or ray://HOST:PORT).
    """
    import ray

    if not log.isEnabledFor(logging.DEBUG):  # Serve's INFO lines would drown the run's own
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    if ray.is_initialized():
        return None
    kwargs: dict[str, Any] = {
        "namespace": "soundwatch",
        "log_to_driver": False,
        "include_dashboard": False,
        "configure_logging": False,
    }
    if address not in ("local", "auto"):
        check_reachable(address)
    try:
        if address == "local":  # always a new Ray of its own, never one found running
            ray.init(address="local", **kwargs)
            return True
        ray.init(address=address, **kwargs)
        return False
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as error:
        where = "this machine's Ray cluster" if address == "auto" else f"Ray at {address}"
        raise SoundwatchError(
            f"cannot connect to {where} ({type(error).__name__}: {error}); start one with "
            "`ray start --head` (workers: `ray start --address HEAD:6379`), pass its address "
            "with --ray-address HOST:PORT, or use --ray-address local to start Ray here"
        ) from None


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail at once when nothing listens at a cluster address (``ray.init`` would retry
    for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError) as error:
        raise SoundwatchError(
            f"nothing answers at the Ray address {address} ({error}); start the head there "
            "with `ray start --head --port PORT`, check the host and port (`ray status` on "
            "the head prints them), or use --ray-address local to start Ray here"
        ) from None


def check_resources(config: InferenceConfig) -> None:
    """Refuse a replica no node of the cluster could ever hold (Serve would wait forever)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    fits = [
        n
        for n in nodes
        if n["Resources"].get("CPU", 0.0) >= config.num_cpus
        and n["Resources"].get("GPU", 0.0) >= config.num_gpus
    ]
    if not fits:
        have = ", ".join(
            f"{n['NodeManagerAddress']}: {n['Resources'].get('CPU', 0):g} CPU "
            f"{n['Resources'].get('GPU', 0):g} GPU"
            for n in nodes
        )
        raise SoundwatchError(
            f"no node of the Ray cluster can hold a replica of {config.num_cpus:g} CPU and "
            f"{config.num_gpus:g} GPU (nodes: {have or 'none'}); lower inference.num_cpus / "
            "inference.num_gpus or add a node with `ray start --address HEAD:6379`"
        )


def deployment_options(config: InferenceConfig) -> dict[str, Any]:
    """Ray Serve options: placement per replica, and fixed replicas or autoscaling."""
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": config.num_cpus, "num_gpus": config.num_gpus},
        # room for the chunks of a few passes queued at once (serve.batch joins them)
        "max_ongoing_requests": max(4, 2 * config.max_batch),
        "health_check_period_s": 2.0,
        "graceful_shutdown_timeout_s": 5.0,
    }
    if isinstance(config.replicas, ReplicaRange):
        options["autoscaling_config"] = {
            "min_replicas": config.replicas.min,
            "initial_replicas": max(1, config.replicas.min),
            "max_replicas": config.replicas.max,
            "target_ongoing_requests": config.target_ongoing_requests,
            "upscale_delay_s": 2.0,
            "downscale_delay_s": 60.0,
        }
    else:
        options["num_replicas"] = config.replicas
    return options


class RayEngine:
    """Runs forward passes on a Ray Serve deployment of the tagger (see the module doc).

    Offers what the runner uses of a local :class:`~soundwatch.models.InferenceWorker`:
    :meth:`infer`, :meth:`warmup`, :attr:`backend`, :attr:`device`, :attr:`num_classes`,
    :attr:`embedding_dim`; plus :meth:`counters` for status and :meth:`close`.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        config: InferenceConfig,
        *,
        device: str = "auto",
        threads: int | None = None,
        backend: str = "auto",
    ) -> None:
        require_ray()
        from ray import serve

        from soundwatch.scale.deployment import TaggerReplica

        self.loaded = loaded
        self.config = config
        self.app_name = f"{app_prefix()}{next(_ENGINES)}"
        self._ray = connect(config.ray_address)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.requests = 0
        self.retries = 0
        self.lost_chunks = 0
        self.lost_windows = 0
        self.running_replicas = 0
        try:
            check_resources(config)
            serve.start(proxy_location="Disabled")
            replica_threads = threads if threads is not None else max(1, int(config.num_cpus))
            app = TaggerReplica.options(**deployment_options(config)).bind(
                loaded, device, replica_threads, backend, config.max_batch, config.batch_wait_s
            )
            self._handle = self._deploy(app)
            info = self._handle.describe.remote().result(timeout_s=config.timeout_s)
        except BaseException:
            self._shutdown()
            raise
        self.backend = f"ray:{info['backend']}"
        self.device = torch.device(info["device"])
        self._refresh_replicas()
        self._poller = threading.Thread(target=self._poll, name="ray-replicas", daemon=True)
        self._poller.start()
        atexit.register(self.close)  # tag, learn and embed do not close their tagger
        log.info(
            "Ray Serve deployment %s: %s replica(s) running %s on %s",
            self.app_name,
            self.running_replicas,
            info["backend"],
            info["device"],
        )

    def _deploy(self, app: Any) -> Any:
        """``serve.run`` within ``start_timeout_s`` (it waits for every replica to start)."""
        from ray import serve

        done: dict[str, Any] = {}

        def run() -> None:
            try:
                done["handle"] = serve.run(app, name=self.app_name, route_prefix=None)
            except BaseException as error:  # reported below, on the caller's thread
                done["error"] = error

        thread = threading.Thread(target=run, name="ray-deploy", daemon=True)
        thread.start()
        thread.join(self.config.start_timeout_s)
        if thread.is_alive():
            raise SoundwatchError(
                f"the Ray Serve deployment did not start within {self.config.start_timeout_s:g} s "
                "(replicas waiting for CPUs/GPUs, or their model failing to load: see "
                "`ray status` and the Ray logs); lower inference.replicas or num_cpus, add nodes, "
                "or raise inference.start_timeout_s"
            )
        if "error" in done:
            error = done["error"]
            raise SoundwatchError(
                f"the Ray Serve deployment failed to start: {type(error).__name__}: {error}"
            ) from error
        return done["handle"]

    # --- the worker interface -----------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.loaded.num_classes

    @property
    def embedding_dim(self) -> int:
        return self.loaded.embedding_dim

    def warmup(self, frames: int, batch: int = 1) -> None:
        """Dummy windows, at least one per running replica (their first-call allocations)."""
        count = max(batch, self.running_replicas, 1)
        self.infer(np.zeros((count, N_MELS, frames), np.float32))

    def chunks(self, windows: int) -> int:
        """How many requests a batch of ``windows`` becomes: one per running replica at
        least, windows of at most ``chunk_windows`` each (more requests queue up on the
        replicas, which is what autoscaling watches)."""
        wanted = max(self.running_replicas, math.ceil(windows / self.config.chunk_windows))
        return max(1, min(windows, wanted))

    def infer(self, mels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mel windows ``[B, 128, T]`` -> (probabilities ``[B, C]``, embeddings ``[B, D]``),
        in the batch's order, computed on the deployment's replicas."""
        batch = np.ascontiguousarray(mels, dtype=np.float32)
        if len(batch) == 0:
            return (
                np.zeros((0, self.num_classes), np.float32),
                np.zeros((0, self.embedding_dim), np.float32),
            )
        parts = np.array_split(batch, self.chunks(len(batch)))
        responses = [self._handle.remote(part) for part in parts]
        with self._lock:
            self.requests += len(parts)
        deadline = time.monotonic() + self.config.timeout_s  # one bound for the round
        results: list[Any] = [self._answer(r, deadline) for r in responses]
        failed = [i for i, result in enumerate(results) if isinstance(result, BaseException)]
        if failed:
            with self._lock:
                self.retries += len(failed)
            log.warning(
                "%d of %d request(s) failed (%s); retrying them once",
                len(failed),
                len(parts),
                _describe(results[failed[0]]),
            )
            retried = [self._handle.remote(parts[i]) for i in failed]
            deadline = time.monotonic() + self.config.timeout_s
            for i, response in zip(failed, retried, strict=True):
                results[i] = self._answer(response, deadline)
            lost = [i for i in failed if isinstance(results[i], BaseException)]
            if lost:
                with self._lock:  # the pipeline counts the whole pass as failed windows
                    self.lost_chunks += len(lost)
                    self.lost_windows += len(batch)
                raise ChunkLost(
                    f"{len(lost)} request(s) of {len(parts)} failed twice "
                    f"(last: {_describe(results[lost[0]])}); the pass's {len(batch)} windows "
                    "are lost"
                )
        probs = np.concatenate([r[0] for r in results])
        embeddings = np.concatenate([r[1] for r in results])
        return probs, embeddings

    def _answer(self, response: Any, deadline: float) -> Any:
        """The response's result by ``deadline`` (monotonic), or the exception that ended
        it (a dead replica, a timeout: the caller retries)."""
        try:
            return response.result(timeout_s=max(0.0, deadline - time.monotonic()))
        except Exception as error:
            if isinstance(error, TimeoutError):
                response.cancel()
            return error

    # --- status -----------------------------------------------------------------------------
    def counters(self) -> dict[str, float]:
        """For status's ``inference`` field: replicas running and what the engine retried
        or lost."""
        with self._lock:
            return {
                "engine_replicas": self.running_replicas,
                "engine_requests": self.requests,
                "engine_retries": self.retries,
                "engine_lost_requests": self.lost_chunks,
                "engine_lost_windows": self.lost_windows,
            }

    def describe_replicas(self) -> dict[str, Any]:
        """``{"RUNNING": n, "STARTING": m, ...}`` from Serve's status of the deployment."""
        from ray import serve

        from soundwatch.scale.deployment import DEPLOYMENT_NAME

        app = serve.status().applications.get(self.app_name)
        if app is None:
            return {}
        deployment = app.deployments.get(DEPLOYMENT_NAME)
        return {str(k): v for k, v in deployment.replica_states.items()} if deployment else {}

    def _refresh_replicas(self) -> None:
        states = self.describe_replicas()
        running = sum(v for k, v in states.items() if k.endswith("RUNNING"))
        with self._lock:
            self.running_replicas = running

    def _poll(self) -> None:
        while not self._closed.wait(REPLICA_POLL_S):
            try:
                self._refresh_replicas()
            except Exception as error:  # the controller restarting: keep the last count
                log.debug("polling the replicas failed: %s", error)

    # --- shutdown ---------------------------------------------------------------------------
    def close(self) -> None:
        """Delete this run's deployment; stop Ray when this process started it."""
        if self._closed.is_set():
            return
        self._closed.set()
        atexit.unregister(self.close)
        self._shutdown()

    def _shutdown(self) -> None:
        import ray
        from ray import serve

        started = time.monotonic()
        try:
            if self._ray:
                serve.shutdown()
            else:
                serve.delete(self.app_name, _blocking=False)
        except Exception as error:
            log.warning("removing the Ray Serve deployment failed: %s", error)
        finally:
            if self._ray is not None:
                ray.shutdown()
        log.debug("Ray engine closed in %.1f s", time.monotonic() - started)


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]

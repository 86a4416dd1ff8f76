"""The tagger as a Ray Serve deployment: one replica = one loaded model and its worker.

Each replica builds the same :class:`~soundwatch.models.InferenceWorker` as a local run
(configured backend, device and threads) from the run's :class:`LoadedModel`, which travels
pickled with the deployment (so no node needs the checkpoint file). Requests are chunks of
mel windows; ``@serve.batch`` joins the chunks that arrive together into one forward pass per
window length (dynamic batching) and hands each caller its own rows back.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import numpy as np
import ray
from ray import serve

from soundwatch.models import InferenceWorker, LoadedModel

#: The deployment's name inside its Serve application.
DEPLOYMENT_NAME = "Tagger"


@serve.deployment(name=DEPLOYMENT_NAME)
class TaggerReplica:
    """One replica: ``__call__(chunk [B, 128, T]) -> (probs [B, C], embeddings [B, D])``."""

    def __init__(
        self,
        loaded: LoadedModel,
        device: str,
        threads: int | None,
        backend: str,
        max_batch: int,
        batch_wait_s: float,
    ) -> None:
        self.worker = InferenceWorker(loaded, device=device, threads=threads, backend=backend)
        self.infer_chunks.set_max_batch_size(max_batch)
        self.infer_chunks.set_batch_wait_timeout_s(batch_wait_s)

    async def __call__(self, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return await self.infer_chunks(chunk)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def infer_chunks(self, chunks: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Chunks that arrived together: one forward pass per window length (the model runs
        in a thread so the replica keeps accepting the next chunks meanwhile)."""
        by_length: dict[int, list[int]] = {}
        for index, chunk in enumerate(chunks):
            by_length.setdefault(chunk.shape[-1], []).append(index)
        results: list[Any] = [None] * len(chunks)
        for indices in by_length.values():
            batch = np.concatenate([chunks[i] for i in indices])
            probs, embeddings = await asyncio.to_thread(self.worker.infer, batch)
            start = 0
            for i in indices:
                stop = start + len(chunks[i])
                results[i] = (probs[start:stop], embeddings[start:stop])
                start = stop
        return results

    def describe(self) -> dict[str, Any]:
        """What this replica runs and where (the status message and tests read it)."""
        context = ray.get_runtime_context()
        return {
            "backend": self.worker.backend,
            "device": self.worker.device.type,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "node_id": context.get_node_id(),
            "actor_name": context.get_actor_name(),
        }

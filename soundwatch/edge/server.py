"""The listener of ``soundwatch serve``: edge frames into the live pipeline.

A ROUTER socket receives every edge's messages on one thread. The first batch of an edge
stream adds it to the pipeline (:meth:`~soundwatch.pipeline.Pipeline.add_stream`) as stream
``NODE-STREAM``; from then on its frames are windowed, tagged, detected and published
exactly like a local stream's. Per stream the listener keeps the next seq it expects:

- a batch below it was seen already (a resend): counted as ``edge_duplicates``, re-acked;
- a batch above it whose ``base`` is above it too: the batches between are lost for good
  (the edge's buffer overflowed): counted (``edge_gap_batches``, ``edge_gap_frames``) and the
  windows restart (a new segment);
- a batch above it otherwise: an earlier one is still missing (lost in a network cut), so
  it is not taken (``edge_out_of_order``): the edge sends everything again from the oldest.

Every batch taken is acknowledged (cumulative ``next``). A stream without frames for
``silent_after`` s is reported silent (``edge_silent`` 1, ``edge_silences`` counts the
times), never removed. Anything that is not a well-formed message is counted
(``edge_malformed``: the listener's, in every edge stream's status) and ignored.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, fields
from typing import Any

import zmq

from soundwatch.edge.wire import (
    Ack,
    FrameBatch,
    Health,
    MalformedEdgeMessage,
    decode,
    encode_ack,
)
from soundwatch.errors import SoundwatchError
from soundwatch.pipeline import Pipeline, StreamState
from soundwatch.security.curve import CurveServer, ServerGuard, is_loopback_endpoint
from soundwatch.stream import AudioBlock, Source, SourceStats

log = logging.getLogger(__name__)

#: Messages the listener keeps queued per peer before ZeroMQ holds the edge back.
RECEIVE_HIGH_WATER_MARK = 1000
#: A malformed message is logged at most this often (they are counted always).
MALFORMED_LOG_EVERY_S = 10.0


@dataclass
class EdgeStreamStats(SourceStats):
    """An edge stream's counters: its edge source's (the :class:`SourceStats` fields, as
    the edge last reported them), its edge buffer's and what the listener noticed."""

    edge_batches: int = 0  # batches taken
    edge_duplicates: int = 0  # batches seen before (resends), ignored
    edge_out_of_order: int = 0  # batches past a missing one, not taken (the edge resends)
    edge_gap_batches: int = 0  # batches the edge dropped before the listener saw them
    edge_gap_frames: int = 0  # frames known lost within a segment by those gaps
    edge_silent: int = 0  # 1 while no frames came for silent_after s
    edge_silences: int = 0  # times the stream went silent
    edge_restarts: int = 0  # times the edge process restarted (a new epoch)
    edge_malformed: int = 0  # malformed messages on the listener (all edges together)
    edge_buffered_frames: int = 0  # frames waiting in the edge for an ack (its last health)
    edge_buffer_dropped_frames: int = 0  # frames the edge dropped: its buffer was full
    edge_resends: int = 0  # batches the edge sent again after an ack timeout


#: Edge health counters shown under their own name in the status (the source's own).
_SOURCE_FIELDS = tuple(f.name for f in fields(SourceStats))
#: Edge health counters shown with an ``edge_`` prefix.
_EDGE_FIELDS = {
    "buffered_frames": "edge_buffered_frames",
    "buffer_dropped_frames": "edge_buffer_dropped_frames",
    "resends": "edge_resends",
}


class EdgeSource(Source):
    """A stream whose frames an edge sends: describes it and counts for its status. The
    pipeline never reads it (:meth:`~soundwatch.pipeline.Pipeline.add_stream`)."""

    def __init__(self, stream_id: str, node: str, stream: str, waits: bool, listener: str):
        self.id = stream_id
        self.node = node
        self.stream = stream
        self.native_rate = 32000
        self.channels = 1
        self._waits = waits
        self.listener = listener
        self.counters = EdgeStreamStats()
        self.edge_source: dict[str, Any] = {}  # the edge's describe() of its source

    def start(self) -> None:
        pass

    def read(self, timeout: float) -> AudioBlock | None:
        return None

    @property
    def ended(self) -> bool:
        return False

    @property
    def waits_when_behind(self) -> bool:
        return self._waits

    def stats(self) -> EdgeStreamStats:
        return EdgeStreamStats(**vars(self.counters))

    def stop(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "kind": "edge",
            "node": self.node,
            "stream": self.stream,
            "listen": self.listener,
        }
        for key, value in self.edge_source.items():  # flat: status source values are scalars
            if isinstance(value, (str, int, float, bool)) or value is None:
                described[f"edge_{key}"] = value
        return described

    def apply_health(self, counters: dict[str, int], source: dict[str, Any]) -> None:
        for name in _SOURCE_FIELDS:
            if name in counters:
                setattr(self.counters, name, counters[name])
        for name, ours in _EDGE_FIELDS.items():
            if name in counters:
                setattr(self.counters, ours, counters[name])
        self.edge_source = source


@dataclass
class _Remote:
    """The listener's view of one edge stream."""

    state: StreamState
    source: EdgeSource
    epoch: int
    next_seq: int
    segment: int = -1
    next_frame: int = 0
    ended: bool = False
    last_frames: float = 0.0  # monotonic time of its last batch taken or seen


class EdgeServer:
    """Receive edge frames on ``listen`` and feed them into ``pipeline`` (a context manager:
    listening from ``__enter__`` until ``__exit__``)."""

    def __init__(
        self,
        listen: str,
        pipeline: Pipeline,
        curve: CurveServer | None = None,
        silent_after: float = 10.0,
    ) -> None:
        self.listen = listen
        self.pipeline = pipeline
        self.silent_after = silent_after
        self.malformed = 0
        self.remotes: dict[str, _Remote] = {}
        self.health: dict[str, Health] = {}  # node -> its last health
        self._context = zmq.Context()  # its own: ZAP (CURVE) is one handler per context
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.rcvhwm = RECEIVE_HIGH_WATER_MARK
        self._socket.linger = 0
        self._guard: ServerGuard | None = None
        if curve is not None:
            self._guard = curve.secure(self._socket, f"edge listener {listen}")
        try:
            self._socket.bind(listen)
        except zmq.ZMQError as error:
            self._close_socket()
            raise SoundwatchError(
                f"cannot listen for edges on {listen}: {error.strerror}; choose another "
                "--listen address (is another serve running?)"
            ) from None
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        if curve is None and not is_loopback_endpoint(listen):
            log.warning(
                "the edge listener %s is reachable from other machines and has no CURVE "
                "keys: anyone there can send it streams, and the frames travel in the clear "
                "(see soundwatch keys generate, --curve-secret/--curve-allow)",
                listen,
            )
        self._stop = threading.Event()
        self._malformed_logged_at = float("-inf")
        self._thread = threading.Thread(target=self._run, name="edge-listener", daemon=True)

    def __enter__(self) -> EdgeServer:
        self._thread.start()
        log.info("listening for edge nodes on %s", self.endpoint)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._close_socket()

    def _close_socket(self) -> None:
        self._socket.close(linger=0)
        if self._guard is not None:
            self._guard.close()
        self._context.term()

    # --- the listener thread -----------------------------------------------------------
    def _run(self) -> None:
        next_check = time.monotonic()
        while not self._stop.is_set():
            if self._socket.poll(100, zmq.POLLIN):
                while True:
                    try:
                        parts = self._socket.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        self._handle(parts)
                    except Exception:  # a bug must not silence every edge: log, go on
                        log.exception("edge listener: handling a message failed; going on")
                    if self._stop.is_set():
                        return
            now = time.monotonic()
            if now >= next_check:
                next_check = now + 0.5
                self._check_silence(now)

    def _handle(self, parts: list[bytes]) -> None:
        try:
            if len(parts) != 2:
                raise MalformedEdgeMessage(f"{len(parts) - 1} frames (expected one)")
            message = decode(parts[1])
        except MalformedEdgeMessage as error:
            self._count_malformed(str(error))
            return
        if isinstance(message, Health):
            self._on_health(message)
            return
        try:
            self._on_batch(parts[0], message)
        except MalformedEdgeMessage as error:
            self._count_malformed(str(error))

    def _count_malformed(self, why: str) -> None:
        self.malformed += 1
        for remote in self.remotes.values():
            remote.source.counters.edge_malformed = self.malformed
        now = time.monotonic()
        if now - self._malformed_logged_at >= MALFORMED_LOG_EVERY_S:
            self._malformed_logged_at = now
            log.warning(
                "edge listener: ignored a malformed message (%s); %d so far", why, self.malformed
            )

    def _on_health(self, health: Health) -> None:
        self.health[health.node] = health
        for stream, entry in health.streams.items():
            remote = self.remotes.get(f"{health.node}-{stream}")
            if remote is not None and remote.epoch == health.epoch:
                remote.source.apply_health(entry["counters"], entry["source"])

    def _on_batch(self, peer: bytes, batch: FrameBatch) -> None:
        stream_id = f"{batch.node}-{batch.stream}"
        remote = self.remotes.get(stream_id)
        if remote is None or remote.epoch != batch.epoch:
            remote = self._open(stream_id, batch, remote)
            if remote is None:
                return
        remote.last_frames = time.monotonic()
        self._wake(remote)
        counters = remote.source.counters
        if batch.seq < remote.next_seq or remote.ended:
            counters.edge_duplicates += 1
            self._ack(peer, remote, batch)
            return
        if batch.seq > remote.next_seq and batch.base > remote.next_seq:
            counters.edge_gap_batches += batch.base - remote.next_seq  # gone for good
            remote.next_seq = batch.base
        if batch.seq > remote.next_seq:  # an earlier one is missing: the edge sends it again
            counters.edge_out_of_order += 1
            self._ack(peer, remote, batch)
            return
        same_segment = remote.segment == batch.segment
        if same_segment and batch.frame < remote.next_frame:
            raise MalformedEdgeMessage(
                f"stream {stream_id}: frame {batch.frame} repeats frames already taken"
            )
        if same_segment and batch.frame > remote.next_frame:
            counters.edge_gap_frames += batch.frame - remote.next_frame
        elif remote.segment >= 0 and not same_segment:
            counters.edge_gap_frames += batch.frame  # the new segment's first frames are missing
        new_segment = batch.new_segment or not same_segment or batch.frame != remote.next_frame
        if not self.pipeline.feed_stream(remote.state, batch.frames, batch.t_start, new_segment):
            return  # the pipeline is stopping
        remote.segment = batch.segment
        remote.next_frame = batch.frame + batch.frames.shape[1]
        remote.next_seq = batch.seq + 1
        counters.edge_batches += 1
        if batch.end:
            remote.ended = True
            self.pipeline.end_stream(remote.state)
            log.info("edge stream %s ended", stream_id)
        self._ack(peer, remote, batch)

    def _open(self, stream_id: str, batch: FrameBatch, previous: _Remote | None) -> _Remote | None:
        """Add an edge stream to the pipeline at its first batch (or its edge's restart)."""
        restarts = 0
        if previous is not None:  # the edge restarted: its old stream ends here
            restarts = previous.source.counters.edge_restarts + 1
            if not previous.ended:
                self.pipeline.end_stream(previous.state)
        source = EdgeSource(stream_id, batch.node, batch.stream, batch.waits, self.endpoint)
        source.counters.edge_restarts = restarts
        source.counters.edge_malformed = self.malformed
        state = self.pipeline.add_stream(source)
        if state is None:
            return None
        health = self.health.get(batch.node)
        if health is not None and health.epoch == batch.epoch and batch.stream in health.streams:
            entry = health.streams[batch.stream]
            source.apply_health(entry["counters"], entry["source"])
        remote = _Remote(state, source, batch.epoch, next_seq=batch.base)
        self.remotes[stream_id] = remote
        log.info("edge stream %s joined (node %s)", stream_id, batch.node)
        return remote

    def _ack(self, peer: bytes, remote: _Remote, batch: FrameBatch) -> None:
        ack = encode_ack(Ack(stream=batch.stream, epoch=remote.epoch, next=remote.next_seq))
        # a peer gone or full: the edge resends after its ack timeout, then gets one
        with contextlib.suppress(zmq.ZMQError):
            self._socket.send_multipart([peer, ack], zmq.NOBLOCK)

    def _wake(self, remote: _Remote) -> None:
        if remote.source.counters.edge_silent:
            remote.source.counters.edge_silent = 0
            log.info("edge stream %s is sending again", remote.state.id)

    def _check_silence(self, now: float) -> None:
        for stream_id, remote in self.remotes.items():
            counters = remote.source.counters
            if remote.ended or counters.edge_silent:
                continue
            if now - remote.last_frames > self.silent_after:
                counters.edge_silent = 1
                counters.edge_silences += 1
                log.warning(
                    "edge stream %s: no frames for %.0f s (network or edge down?); it stays "
                    "in the status as silent",
                    stream_id,
                    self.silent_after,
                )

"""An edge node: capture, compute log-mel frames here, send them to ``soundwatch serve``.

One thread does it all, every :data:`READ_INTERVAL_S`: it reads what each source has ready,
pushes it through the stream's :class:`~soundwatch.dsp.StreamingLogMel` (the same frontend
the central pipeline runs, so the frames are the ones ``soundwatch run`` would compute) and
queues the new frames as one batch per stream. Batches go out on a DEALER socket and stay
in the stream's buffer until the server acknowledges them (:class:`~soundwatch.edge.wire.Ack`):

- no ack for ``ack_timeout`` s (a network cut, a restarted server): every unacknowledged
  batch is sent again, oldest first (the server drops those it already has, by seq);
- the buffer holds at most ``buffer_seconds`` of frames per stream. A live source (a
  microphone) drops its oldest batches past that, counted in ``buffer_dropped_frames``;
  the next batch says so (``new_segment``, and ``base`` tells the server which seqs are
  gone), so the server starts a new segment and counts the gap. A source that can wait
  (a file read fast) is not read while its buffer is full: nothing is lost.

Every ``health_interval`` s the node sends its health: per stream, its source's counters and
its buffer's (buffered frames, drops, resends), which ``serve`` shows in the stream's status.

This module must not import torch (an edge is a small device): it imports the frontend,
the sources and ZeroMQ only (tests/test_edge.py checks).
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import zmq

from soundwatch.dsp import StreamingLogMel
from soundwatch.dsp import warmup as warmup_frontend
from soundwatch.dsp.windows import FRAMES_PER_SECOND
from soundwatch.edge.config import EdgeConfig
from soundwatch.edge.wire import (
    ENCODINGS,
    MAX_FRAMES,
    FrameBatch,
    Health,
    MalformedEdgeMessage,
    decode_ack,
    encode_frames,
    encode_health,
)
from soundwatch.errors import SoundwatchError
from soundwatch.security.curve import CurveClient, client_monitor, is_loopback_endpoint
from soundwatch.stream import AudioBlock, Source
from soundwatch.stream.spec import STREAM_ID

log = logging.getLogger(__name__)

#: How often the sources are read and new frames sent.
READ_INTERVAL_S = 0.05
#: Messages queued in the socket at most; past it batches wait in the stream's buffer.
SEND_HIGH_WATER_MARK = 100
#: An ack saying a batch is missing is acted on only when that batch was sent longer ago
#: than this (acks of batches sent before it were still on their way).
FAST_RESEND_GUARD_S = 0.2


def default_node_id() -> str:
    """The host name, made topic-safe (letters, digits, _ and -)."""
    name = "".join(c if c.isalnum() or c in "_-" else "-" for c in socket.gethostname())
    name = name.strip("-") or "edge"
    return name if STREAM_ID.match(name) else f"edge-{name}"


@dataclass
class EdgeStreamCounters:
    """What one stream's buffer did (sent to the server in the node's health)."""

    batches_sent: int = 0  # batches sent for the first time
    resends: int = 0  # batches sent again after an ack timeout
    acked_batches: int = 0
    buffer_dropped_frames: int = 0  # live frames dropped because the buffer was full
    buffer_overflows: int = 0  # times the buffer overflowed (each is one gap)
    frames: int = 0  # frames computed


@dataclass
class _EdgeStream:
    """One source, its frontend, its segment and its buffer of unacknowledged batches."""

    source: Source
    frontend: StreamingLogMel = field(default_factory=StreamingLogMel)
    segment: int = 0
    t_origin: float | None = None  # Unix time of the current segment's frame 0 (None: closed)
    next_seq: int = 0
    buffer: deque[FrameBatch] = field(default_factory=deque)  # unacknowledged, oldest first
    buffered_frames: int = 0
    unsent: int = 0  # the last ``unsent`` batches of the buffer were not sent yet
    highest_sent: int = -1  # the highest seq sent so far
    lost_before_next: bool = False  # audio or frames were lost before the next batch
    ended: bool = False  # the source ended and its last batch is queued
    sent_at: dict[int, float] = field(default_factory=dict)  # seq -> monotonic last send
    acked_at: float = field(default_factory=time.monotonic)  # the last ack that freed batches
    last_ack: int = -1  # the ``next`` of the last ack
    counters: EdgeStreamCounters = field(default_factory=EdgeStreamCounters)

    @property
    def id(self) -> str:
        return self.source.id


class EdgeNode:
    """Capture ``sources`` and send their frames to the server at ``config.to``."""

    def __init__(self, sources: list[Source], config: EdgeConfig) -> None:
        if config.to is None:
            raise SoundwatchError("an edge needs the server's address: --to tcp://HOST:PORT")
        if not sources:
            raise SoundwatchError("an edge needs at least one --source")
        self.config = config
        self.node = config.id or default_node_id()
        self.epoch = random.getrandbits(62)  # this process: a restarted edge starts afresh
        self.streams = [_EdgeStream(source) for source in sources]
        self.capacity = int(config.buffer_seconds * FRAMES_PER_SECOND)
        self._stop = threading.Event()
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.sndhwm = SEND_HIGH_WATER_MARK
        # Queue only to a live connection: while the server is unreachable, batches wait in
        # the stream's bounded buffer (counted) instead of in the socket's queue.
        self._socket.immediate = True
        self._socket.linger = 0
        self._curve = CurveClient.from_options(config.curve_secret, config.curve_server)
        self._monitor = None
        if self._curve is not None:
            self._curve.secure(self._socket)
            self._monitor, _ = client_monitor(self._socket, f"edge -> {config.to}")
        self._next_health = 0.0

    def stop(self) -> None:
        """Ask :meth:`run` to finish: sources stop, what is buffered is still sent."""
        self._stop.set()

    def run(self, drain_timeout: float = 10.0) -> None:
        """Capture and send until every source ended and was acknowledged, or :meth:`stop`
        (then the buffered batches get ``drain_timeout`` s to be acknowledged)."""
        warmup_frontend()
        try:
            self._socket.connect(self.config.to)
        except zmq.ZMQError as error:
            raise SoundwatchError(
                f"cannot connect to {self.config.to}: {error.strerror}; use "
                "tcp://HOST:PORT (the address soundwatch serve --listen binds)"
            ) from None
        if self._curve is None and not is_loopback_endpoint(self.config.to):
            log.warning(
                "sending to %s without CURVE keys: the frames travel in the clear and the "
                "server cannot tell this edge from another (--curve-secret/--curve-server)",
                self.config.to,
            )
        started: list[Source] = []
        try:
            for stream in self.streams:
                stream.source.start()
                started.append(stream.source)
            self._loop()
            self._drain(drain_timeout)
        finally:
            for source in started:
                source.stop()
            self._send_health(time.time())
            if self._monitor is not None:
                self._monitor.stop()
            self._socket.close(linger=200)
            self._context.term()

    # --- the loop ----------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            tick = time.monotonic()
            for stream in self.streams:
                if not stream.ended:
                    self._capture(stream)
            self._exchange(tick)
            if all(s.ended and not s.buffer for s in self.streams):
                return
            self._wait_acks(tick + READ_INTERVAL_S)
        for stream in self.streams:  # stopping: each stream's tail is its last batch
            if not stream.ended:
                stream.source.stop()
                self._end_segment(stream, end=True)

    def _drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(s.buffer for s in self.streams) and time.monotonic() < deadline:
            tick = time.monotonic()
            self._exchange(tick)
            self._wait_acks(tick + READ_INTERVAL_S)
        left = sum(len(s.buffer) for s in self.streams)
        if left:
            log.warning("stopping with %d batch(es) the server did not acknowledge", left)

    def _wait_acks(self, until: float) -> None:
        while (remaining := until - time.monotonic()) > 0:
            if self._socket.poll(remaining * 1000, zmq.POLLIN):
                self._receive_acks()

    # --- capture -----------------------------------------------------------------------
    def _capture(self, stream: _EdgeStream) -> None:
        waits = stream.source.waits_when_behind
        while True:
            if waits and stream.buffered_frames >= self.capacity:
                return  # held back until the server acknowledges: nothing is lost
            block = stream.source.read(timeout=0.0)
            if block is None:
                break
            self._feed(stream, block)
        if stream.source.ended:
            self._end_segment(stream, end=True)

    def _feed(self, stream: _EdgeStream, block: AudioBlock) -> None:
        if block.new_segment and stream.t_origin is not None:
            self._end_segment(stream)  # the source lost audio: the frames after start afresh
            stream.lost_before_next = True
        if stream.t_origin is None:
            stream.t_origin = block.t_start
        first = stream.frontend.frames_emitted
        self._queue(stream, stream.frontend.push(block.samples), first)

    def _end_segment(self, stream: _EdgeStream, end: bool = False) -> None:
        """Flush the frontend: the segment's last frames (and, with ``end``, the stream's)."""
        if stream.t_origin is not None:
            first = stream.frontend.frames_emitted
            self._queue(stream, stream.frontend.flush(), first, force=end)
            stream.frontend.reset()
            stream.t_origin = None
            stream.segment += 1
        elif end:
            self._queue(stream, np.empty((128, 0), np.float32), 0, force=True)
        if end:
            stream.buffer[-1].end = True
            stream.ended = True

    def _queue(
        self, stream: _EdgeStream, frames: np.ndarray, first: int, force: bool = False
    ) -> None:
        """Append the frames as batches (at most MAX_FRAMES each) to the stream's buffer."""
        if frames.shape[1] == 0 and not force:
            return
        stream.counters.frames += frames.shape[1]
        dtype = ENCODINGS[self.config.encoding]
        starts = range(0, max(frames.shape[1], 1), MAX_FRAMES)
        for start in starts:
            part = frames[:, start : start + MAX_FRAMES]
            stream.buffer.append(
                FrameBatch(
                    node=self.node,
                    stream=stream.id,
                    epoch=self.epoch,
                    seq=stream.next_seq,
                    base=0,  # set when sent
                    segment=stream.segment,
                    t_origin=stream.t_origin if stream.t_origin is not None else time.time(),
                    frame=first + start,
                    frames=part.astype(dtype),
                    new_segment=stream.lost_before_next,
                    waits=stream.source.waits_when_behind,
                    encoding=self.config.encoding,
                )
            )
            stream.next_seq += 1
            stream.unsent += 1
            stream.buffered_frames += part.shape[1]
            stream.lost_before_next = False
        self._bound(stream)

    def _bound(self, stream: _EdgeStream) -> None:
        """A live stream's buffer past capacity drops its oldest batches (counted)."""
        if stream.buffered_frames <= self.capacity or stream.source.waits_when_behind:
            return
        dropped = 0
        while stream.buffered_frames > self.capacity and len(stream.buffer) > 1:
            batch = stream.buffer.popleft()
            stream.buffered_frames -= batch.frames.shape[1]
            stream.sent_at.pop(batch.seq, None)
            dropped += batch.frames.shape[1]
            stream.unsent = min(stream.unsent, len(stream.buffer))
        stream.buffer[0].new_segment = True  # the server restarts the windows here
        stream.counters.buffer_dropped_frames += dropped
        stream.counters.buffer_overflows += 1
        log.warning(
            "stream %s: the server has not acknowledged %.0f s of frames; dropped the oldest "
            "%d frames (%d in total)",
            stream.id,
            self.config.buffer_seconds,
            dropped,
            stream.counters.buffer_dropped_frames,
        )

    # --- network -----------------------------------------------------------------------
    def _exchange(self, now: float) -> None:
        self._receive_acks()
        for stream in self.streams:
            oldest = stream.buffer[0].seq if stream.buffer else None
            sent = stream.sent_at.get(oldest) if oldest is not None else None
            if sent is not None and now - max(sent, stream.acked_at) > self.config.ack_timeout:
                # no ack for the oldest batch: go back, send every unacked batch again
                stream.counters.resends += len(stream.buffer) - stream.unsent
                stream.unsent = len(stream.buffer)
                stream.sent_at.clear()
                log.info(
                    "stream %s: no ack for %.1f s; sending %d batch(es) again",
                    stream.id,
                    self.config.ack_timeout,
                    len(stream.buffer),
                )
            self._send(stream, now)
        # Until one goes out (the connection is not up at first), try again every round:
        # a short run must not end before the server heard the edge's health once.
        if now >= self._next_health and self._send_health(time.time()):
            self._next_health = now + self.config.health_interval

    def _send(self, stream: _EdgeStream, now: float) -> None:
        base = stream.buffer[0].seq if stream.buffer else stream.next_seq
        while stream.unsent:
            batch = stream.buffer[len(stream.buffer) - stream.unsent]
            batch.base = base
            try:
                self._socket.send(encode_frames(batch), zmq.NOBLOCK)
            except zmq.Again:  # not connected yet, or the socket's queue is full
                return
            if batch.seq > stream.highest_sent:  # else it is a resend (counted at the go-back)
                stream.highest_sent = batch.seq
                stream.counters.batches_sent += 1
            stream.sent_at[batch.seq] = now
            stream.unsent -= 1

    def _receive_acks(self) -> None:
        by_id = {stream.id: stream for stream in self.streams}
        while True:
            try:
                data = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                ack = decode_ack(data)
            except MalformedEdgeMessage as error:
                log.warning("ignored a malformed message from the server: %s", error)
                continue
            stream = by_id.get(ack.stream)
            if stream is None or ack.epoch != self.epoch:
                continue
            if ack.next == stream.last_ack:  # a repeated ack: a later batch came, not this
                self._resend_missing(stream, ack.next)
            stream.last_ack = ack.next
            while stream.buffer and stream.buffer[0].seq < ack.next:
                batch = stream.buffer.popleft()
                stream.buffered_frames -= batch.frames.shape[1]
                stream.sent_at.pop(batch.seq, None)
                stream.counters.acked_batches += 1
                stream.acked_at = time.monotonic()
            stream.unsent = min(stream.unsent, len(stream.buffer))

    def _resend_missing(self, stream: _EdgeStream, missing: int) -> None:
        """The server repeated its ack of ``missing``: a later batch reached it, not this one
        (lost in a cut). Send everything from there again at once rather than after the
        ack timeout (which a live stream's short buffer may never reach), unless it was
        (re)sent just now and this ack was on its way already."""
        sent = stream.sent_at.get(missing)
        if sent is None or time.monotonic() - sent < FAST_RESEND_GUARD_S:
            return
        again = sum(1 for batch in stream.buffer if batch.seq >= missing)
        stream.counters.resends += again - stream.unsent
        stream.unsent = again
        for seq in [seq for seq in stream.sent_at if seq >= missing]:
            del stream.sent_at[seq]

    def _send_health(self, t: float) -> bool:
        """Send the node's health; False when it could not go (not connected yet)."""
        streams = {}
        for stream in self.streams:
            counters = {k: int(v) for k, v in vars(stream.source.stats()).items()}
            counters.update({k: int(v) for k, v in vars(stream.counters).items()})
            counters["buffered_frames"] = stream.buffered_frames
            counters["buffer_capacity_frames"] = self.capacity
            streams[stream.id] = {
                "source": _plain(stream.source.describe()),
                "counters": counters,
            }
        health = Health(node=self.node, epoch=self.epoch, t=t, streams=streams)
        try:
            self._socket.send(encode_health(health), zmq.NOBLOCK)
        except zmq.Again:  # not connected: the next one goes when it is
            return False
        return True


def _plain(value: object) -> object:
    """``describe()`` output as msgpack-safe values (paths and the like as text)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)

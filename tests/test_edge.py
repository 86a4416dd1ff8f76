"""Edge nodes and ``soundwatch serve``: real processes, real sockets, the real checkpoint.

- the wire format round-trips and refuses malformed messages field by field;
- an edge node never imports torch;
- two ``soundwatch edge`` processes (float16 and float32 frames) -> ``soundwatch serve`` ->
  a subscriber give the probabilities and events of one ``soundwatch run`` on the same
  files (float16 within the tolerance measured in docs/edge.md);
- a network cut (a TCP proxy between the edges and serve, stopped for 3 s) is survived:
  the edge with room in its buffer resends and loses nothing, the edge whose buffer
  overflows shows the gap in status, the silence is reported while it lasts, no window is
  delivered twice; a rogue DEALER's malformed messages are counted and serve goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from soundwatch.edge.wire import (
    Ack,
    FrameBatch,
    Health,
    MalformedEdgeMessage,
    decode,
    decode_ack,
    encode_ack,
    encode_frames,
    encode_health,
)
from tests.conftest import REPO_ROOT, shared_file

#: Largest difference of a probability between float16 and float32 frames, mn04 on the
#: real clips: 4.8e-4 (benchmarks/edge_float16.py, docs/edge.md); twice that as tolerance.
FLOAT16_TOLERANCE = 1e-3
#: float32 frames are the frames ``run`` computes: only batching may differ.
FLOAT32_TOLERANCE = 1e-4
DEADLINE_S = 240.0


# --- wire format -------------------------------------------------------------------------
def _batch(**changes: object) -> FrameBatch:
    frames = np.random.default_rng(0).normal(-5, 2, (128, 7)).astype(np.float32)
    fields: dict = dict(
        node="pi1", stream="kitchen", epoch=7, seq=3, base=1, segment=2, t_origin=1.7e9,
        frame=40, frames=frames, new_segment=True, end=False, waits=False,
    )  # fmt: skip
    fields.update(changes)
    return FrameBatch(**fields)


@pytest.mark.parametrize("encoding", ["float16", "float32"])
def test_frames_round_trip(encoding: str) -> None:
    batch = _batch(encoding=encoding)
    got = decode(encode_frames(batch))
    assert isinstance(got, FrameBatch)
    assert (got.node, got.stream, got.epoch, got.seq, got.base) == ("pi1", "kitchen", 7, 3, 1)
    assert (got.segment, got.frame, got.new_segment, got.end) == (2, 40, True, False)
    assert got.t_start == pytest.approx(1.7e9 + 0.4)
    if encoding == "float32":
        np.testing.assert_array_equal(got.frames, batch.frames)
    else:
        np.testing.assert_array_equal(got.frames, batch.frames.astype(np.float16))
        assert got.frames.dtype == np.float32


def test_health_and_ack_round_trip() -> None:
    health = Health(
        "pi1", 7, 1.7e9, {"kitchen": {"source": {"kind": "mic"}, "counters": {"gaps": 2}}}
    )
    got = decode(encode_health(health))
    assert isinstance(got, Health)
    assert got.streams["kitchen"]["counters"] == {"gaps": 2}
    assert decode_ack(encode_ack(Ack("kitchen", 7, 12))) == Ack("kitchen", 7, 12)


def _frames_body(**changes: object) -> bytes:
    body = msgpack.unpackb(encode_frames(_batch()))
    body.update(changes)
    return msgpack.packb(body)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\xc1garbage", "not msgpack"),
        (msgpack.packb([1, 2]), "not a map"),
        (_frames_body(v=2), "unknown version"),
        (_frames_body(v=True), "unknown version"),
        (_frames_body(kind="tags"), "unknown kind"),
        (_frames_body(node="a.b"), "bad node"),
        (_frames_body(stream=""), "bad stream"),
        (_frames_body(seq=-1), "non-negative"),
        (_frames_body(seq=1.5), "'seq' must be int"),
        (_frames_body(base=9), "past seq"),
        (_frames_body(t_origin=float("nan")), "Unix time"),
        (_frames_body(encoding="int8"), "unknown encoding"),
        (_frames_body(n_frames=8), "expected 128 x 8"),
        (_frames_body(n_frames=100_000), "at most 1000"),
        (_frames_body(data=np.full((128, 7), np.inf, np.float16).tobytes()), "NaN or Inf"),
        (_frames_body(end=1), "'end' must be bool"),
        (
            msgpack.packb(
                {
                    "v": 1,
                    "kind": "health",
                    "node": "n",
                    "epoch": 1,
                    "t": 1.0,
                    "streams": {"s": {"counters": {"gaps": "x"}}},
                }
            ),
            "integers",
        ),
    ],
)
def test_malformed_messages_are_refused_naming_the_problem(data: bytes, why: str) -> None:
    with pytest.raises(MalformedEdgeMessage, match=why):
        decode(data)


def test_the_edge_node_never_imports_torch() -> None:
    code = (
        "import sys, soundwatch.cli, soundwatch.edge.node, soundwatch.edge.command\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime'))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, timeout=120)


# --- processes ---------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _soundwatch(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "soundwatch.cli", *args],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _wait_for(
    condition: Callable[[], object],
    what: str,
    timeout: float = DEADLINE_S,
    details: Callable[[], object] = lambda: "",
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {details()}")
        time.sleep(0.05)


def _stop(process: subprocess.Popen, log: Path) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(timeout=60) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written
            break
    return rows


@pytest.fixture(scope="module")
def model_args() -> list[str]:
    weights = shared_file("models/mn04_as_mAP_432.pt")
    return ["--weights", str(weights), "--backend", "onnx", "--threads", "1"]


def test_two_edges_through_serve_match_one_run(tmp_path: Path, model_args: list[str]) -> None:
    """float16 and float32 edges -> serve -> subscriber == run on the same files, all over
    CURVE; an edge without keys is refused."""
    from soundwatch.client import CurveClient, Subscriber
    from soundwatch.security.keys import generate_keys
    from soundwatch.sinks.messages import Event, Status, Tags

    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    allowed.mkdir()
    server_key, server_secret = generate_keys(keys, "server")
    secrets = {}
    for name in ("n16", "n32", "subscriber"):
        public, secrets[name] = generate_keys(keys, name)
        (allowed / public.name).write_bytes(public.read_bytes())

    speech = shared_file("audio/clips/speech.wav")
    bell = shared_file("audio/clips/audioset_R9_ZSCveAHg_speech_bell.wav")
    # --no-stagger on both sides: serve phases its streams in the order the edges connect
    reference = subprocess.run(
        [sys.executable, "-m", "soundwatch.cli", "run", "--source", f"speech=file:{speech}",
         "--source", f"bell=file:{bell}", "--pace", "fast", "--jsonl", "-", "--no-stagger",
         "--publish", f"ipc://{tmp_path / 'ref'}", *model_args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=DEADLINE_S,
    )  # fmt: skip
    assert reference.returncode == 0, reference.stderr
    expected = [json.loads(line) for line in reference.stdout.splitlines()]
    port = _free_port()
    publish = f"ipc://{tmp_path / 'pub'}"
    serve_log = tmp_path / "serve.log"
    server = _soundwatch(
        "serve", "--listen", f"tcp://127.0.0.1:{port}", "--publish", publish,
        "--wait-for-subscribers", "1", "--curve-secret", str(server_secret),
        "--curve-allow", str(allowed), "--no-stagger", *model_args, log=serve_log,
    )  # fmt: skip
    edges: list[subprocess.Popen] = []
    refused: list[subprocess.Popen] = []
    try:
        curve = CurveClient(secrets["subscriber"], server_key)
        with Subscriber(publish, curve=curve) as subscriber:
            _wait_for(lambda: "listening for edges" in serve_log.read_text(), "serve")
            plain = _soundwatch(  # no keys: refused, its stream never appears
                "edge", "--source", f"speech=file:{speech}", "--pace", "fast",
                "--to", f"tcp://127.0.0.1:{port}", "--id", "plain", log=tmp_path / "plain.log",
            )  # fmt: skip
            refused.append(plain)
            for node, spec, encoding in (("n16", speech, "float16"), ("n32", bell, "float32")):
                name = "speech" if spec == speech else "bell"
                edges.append(
                    _soundwatch(
                        "edge",
                        "--source",
                        f"{name}=file:{spec}",
                        "--pace",
                        "fast",
                        "--to",
                        f"tcp://127.0.0.1:{port}",
                        "--id",
                        node,
                        "--encoding",
                        encoding,
                        "--curve-secret",
                        str(secrets[node]),
                        "--curve-server",
                        str(server_key),
                        log=tmp_path / f"{node}.log",
                    )
                )
            got: list = []
            ended: set[str] = set()
            deadline = time.monotonic() + DEADLINE_S
            while ended != {"n16-speech", "n32-bell"}:
                assert time.monotonic() < deadline, serve_log.read_text()
                message = subscriber.receive(timeout=1.0)
                if message is None:
                    continue
                got.append(message)
                if isinstance(message, Status) and message.ended:
                    ended.add(message.stream)
        for edge, node in zip(edges, ("n16", "n32"), strict=True):
            assert edge.wait(timeout=60) == 0, (tmp_path / f"{node}.log").read_text()
        assert plain.poll() is None  # still waiting for an ack that never comes
        assert not any(m.stream.startswith("plain") for m in got)
        # The refusal is logged when the plain edge's handshake fails, which under load may
        # come after the fast edges finished: wait for it, bounded.
        _wait_for(
            lambda: "plaintext" in serve_log.read_text() or "hung up" in serve_log.read_text(),
            "serve to log the plaintext edge's refusal",
            details=serve_log.read_text,
        )
    finally:
        for edge in [*edges, *refused]:
            if edge.poll() is None:
                edge.kill()
                edge.wait(timeout=30)
        _stop(server, serve_log)

    for ours, theirs, tolerance in (
        ("n16-speech", "speech", FLOAT16_TOLERANCE),
        ("n32-bell", "bell", FLOAT32_TOLERANCE),
    ):
        tags = [m for m in got if isinstance(m, Tags) and m.stream == ours]
        ref = [r for r in expected if r["kind"] == "tags" and r["stream"] == theirs]
        assert len(tags) == len(ref) > 5
        origin, ref_origin = tags[0].t_start, ref[0]["t_start"]
        for message, row in zip(tags, ref, strict=True):
            assert message.t_start - origin == pytest.approx(row["t_start"] - ref_origin, abs=1e-6)
            assert message.t_end - origin == pytest.approx(row["t_end"] - ref_origin, abs=1e-6)
            np.testing.assert_allclose(message.probs, row["probs"], atol=tolerance, rtol=0)
        events = [
            (e.label, e.state, round(e.onset - origin, 2), e.offset and round(e.offset - origin, 2))
            for e in got
            if isinstance(e, Event) and e.stream == ours
        ]
        ref_events = [
            (r["label"], r["state"], round(r["onset"] - ref_origin, 2),
             r["offset"] and round(r["offset"] - ref_origin, 2))
            for r in expected
            if r["kind"] == "events" and r["stream"] == theirs
        ]  # fmt: skip
        assert events == ref_events and events
        status = [m for m in got if isinstance(m, Status) and m.stream == ours][-1]
        assert status.source["kind"] == "edge" and status.source["edge_kind"] == "file"
        assert status.counters["edge_gap_batches"] == 0
        assert status.counters["windows_dropped"] == 0


# --- the network cut ---------------------------------------------------------------------
class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target``. :meth:`cut` is a network cut: nothing
    flows any more and no connection is accepted (what was sent meanwhile is lost);
    :meth:`restore` closes the dead connections and accepts new ones."""

    def __init__(self, port: int, target: int) -> None:
        self.port, self.target = port, target
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._stop = threading.Event()
        self.restore()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def restore(self) -> None:
        with self._lock:
            self._close_all()
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen()
            listener.setblocking(False)
            self._listener = listener
            self._selector.register(listener, selectors.EVENT_READ)

    def cut(self) -> None:
        with self._lock:
            for sock in [*self._pairs, self._listener]:
                if sock is not None:
                    self._selector.unregister(sock)  # nothing is read or forwarded any more
            if self._listener is not None:
                self._listener.close()
            self._listener = None

    def _close_all(self) -> None:
        for sock in self._pairs:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            sock.close()
        self._pairs.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            self._close_all()
            if self._listener is not None:
                self._selector.unregister(self._listener)
                self._listener.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                events = self._selector.select(timeout=0.05) if self._selector.get_map() else []
                for key, _ in events:
                    sock = key.fileobj
                    if sock is self._listener:
                        client, _ = sock.accept()
                        upstream = socket.create_connection(("127.0.0.1", self.target))
                        for a, b in ((client, upstream), (upstream, client)):
                            self._pairs[a] = b
                            self._selector.register(a, selectors.EVENT_READ)
                    elif sock in self._pairs:
                        self._pump(sock)
            time.sleep(0.001)

    def _pump(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
            if data:
                self._pairs[sock].sendall(data)
                return
        except OSError:
            pass
        other = self._pairs.pop(sock)
        self._pairs.pop(other, None)
        for s in (sock, other):
            self._selector.unregister(s)
            s.close()


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[int], TcpProxy]]:
    proxies: list[TcpProxy] = []

    def make(target: int) -> TcpProxy:
        proxies.append(TcpProxy(_free_port(), target))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()


def test_a_network_cut_is_survived_and_a_rogue_peer_ignored(
    tmp_path: Path, model_args: list[str], tcp_proxy: Callable[[int], TcpProxy]
) -> None:
    port = _free_port()
    config = tmp_path / "serve.yaml"
    config.write_text("publish:\n  status_interval: 0.3\nserve:\n  silent_after: 1.0\n")
    out, serve_log = tmp_path / "out.jsonl", tmp_path / "serve.log"
    server = _soundwatch(
        "serve", "--config", str(config), "--listen", f"tcp://127.0.0.1:{port}",
        "--publish", f"ipc://{tmp_path / 'pub'}", "--jsonl", str(out),
        "--window", "1", "--hop", "0.5", *model_args, log=serve_log,
    )  # fmt: skip
    proxy = tcp_proxy(port)
    edges = []
    rogue_context = zmq.Context()
    try:
        _wait_for(lambda: "listening for edges" in serve_log.read_text(), "serve")
        # "keep": 30 s buffer (room for the cut); "tight": 1 s buffer (the cut overflows it)
        for node, buffer in (("keep", "30"), ("tight", "1")):
            edges.append(
                _soundwatch(
                    "edge",
                    "--source",
                    "s=synthetic",
                    "--to",
                    f"tcp://127.0.0.1:{proxy.port}",
                    "--id",
                    node,
                    "--buffer",
                    buffer,
                    log=tmp_path / f"{node}.log",
                )
            )

        def tags(stream: str) -> list[dict]:
            return [r for r in _jsonl(out) if r["kind"] == "tags" and r["stream"] == stream]

        def status(stream: str) -> dict:
            rows = [r for r in _jsonl(out) if r["kind"] == "status" and r["stream"] == stream]
            return rows[-1]["counters"] if rows else {}

        _wait_for(lambda: len(tags("keep-s")) >= 3 and len(tags("tight-s")) >= 3, "tags")
        before = {stream: len(tags(stream)) for stream in ("keep-s", "tight-s")}
        t_cut = time.time()
        proxy.cut()
        _wait_for(lambda: status("keep-s").get("edge_silent") == 1, "silence reported", 20)
        time.sleep(max(0.0, t_cut + 3.0 - time.time()))  # the cut lasts 3 s
        t_restore = time.time()
        proxy.restore()

        # a rogue peer: malformed messages of every kind, straight to the listener
        rogue = rogue_context.socket(zmq.DEALER)
        rogue.connect(f"tcp://127.0.0.1:{port}")
        garbage = [b"\x00", msgpack.packb({"v": 1, "kind": "frames"}), _frames_body(n_frames=3)]
        for data in garbage:
            rogue.send(data)
        rogue.send_multipart([b"two", b"frames"])

        def recovered() -> bool:
            keep, tight = status("keep-s"), status("tight-s")
            return (
                keep.get("edge_silent") == 0
                and keep.get("edge_resends", 0) > 0  # what was sent into the cut, again
                and tight.get("edge_buffer_dropped_frames", 0) > 0
                and tight.get("edge_gap_batches", 0) > 0
                and keep.get("edge_malformed", 0) >= len(garbage) + 1
                and all(r["t_start"] > t_restore + 1 for r in tags("keep-s")[-1:])
                and all(r["t_start"] > t_restore + 1 for r in tags("tight-s")[-1:])
            )

        _wait_for(
            recovered, "recovery after the cut", 60, lambda: (status("keep-s"), status("tight-s"))
        )
        assert server.poll() is None, serve_log.read_text()
    finally:
        rogue_context.destroy(linger=0)
        for edge in edges:
            if edge.poll() is None:
                edge.send_signal(signal.SIGTERM)
        for edge, node in zip(edges, ("keep", "tight"), strict=False):
            assert edge.wait(timeout=60) == 0, (tmp_path / f"{node}.log").read_text()
        _stop(server, serve_log)

    for stream in ("keep-s", "tight-s"):
        starts = [r["t_start"] for r in tags(stream)]
        assert len(starts) > before[stream]
        assert starts == sorted(starts) and len(set(starts)) == len(starts)  # no duplicates
    keep_status, tight_status = status("keep-s"), status("tight-s")
    assert keep_status["edge_silences"] >= 1
    # the edge with room lost nothing: one segment, its windows a hop apart throughout
    assert keep_status["edge_gap_batches"] == keep_status["edge_buffer_dropped_frames"] == 0
    assert keep_status["resyncs"] == 0
    steps = np.diff([r["t_start"] for r in tags("keep-s")])[:-1]  # the last: the stop's tail
    hops = steps / 0.5
    # the first step holds the stream's stagger phase: none if the server added it first,
    # 30 of the hop's 50 frames if second (pipeline.stagger)
    phase = hops[0] - np.floor(hops[0] + 1e-6)
    assert phase == pytest.approx(0.0, abs=1e-5) or phase == pytest.approx(0.6, abs=1e-5)
    hops[0] -= phase
    np.testing.assert_allclose(hops, np.round(hops), atol=1e-5)  # one hop apart, or more...
    assert round(sum(hops - 1)) == keep_status["windows_dropped"]  # ...where inference was behind
    covered = [r for r in tags("keep-s") if t_cut + 0.5 < r["t_start"] < t_restore - 0.5]
    assert covered  # windows of the audio captured during the cut arrived (resent)
    # the edge whose buffer overflowed: the gap is counted and its windows restarted
    assert tight_status["resyncs"] >= 1
    assert tight_status["edge_gap_frames"] > 0
    assert max(np.diff([r["t_start"] for r in tags("tight-s")])) > 1.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "s=synthetic"], "an edge needs the server's address: --to tcp://HOST:PORT"),
        (
            ["--to", "tcp://localhost", "--source", "s=synthetic"],
            "edge.to: 'tcp://localhost' is not a ZeroMQ endpoint: it has no port; use tcp://",
        ),
        (  # well formed, but ZeroMQ refuses it when connecting
            ["--to", "ipc:///tmp/" + "x" * 200, "--source", "s=synthetic"],
            "cannot connect to ipc:///tmp/xxx",
        ),
    ],
)
def test_edge_command_errors_are_one_line(args: list[str], message: str) -> None:
    from click.testing import CliRunner

    from soundwatch.cli import main

    result = CliRunner().invoke(main, ["edge", *args])
    assert result.exit_code == 1, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output


def test_an_edge_without_a_microphone_refuses_instead_of_sending_the_demo(monkeypatch) -> None:
    import soundwatch.sources as sources
    from soundwatch.errors import SoundwatchError

    monkeypatch.setattr(sources, "list_input_devices", lambda: [])
    assert sources.resolve_source_spec("auto") == "synthetic"  # run: the demo, with a warning
    with pytest.raises(SoundwatchError, match="no audio input device found; give the sources"):
        sources.resolve_source_spec("auto", demo_fallback=False)

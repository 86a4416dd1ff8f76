"""``--engine ray`` on a real local Ray cluster (a head and a worker node on this machine).

One cluster per module (two nodes of one CPU each); every run is a real ``soundwatch run``
process joining it with ``--ray-address``, deploying its own Ray Serve application, tagging
real files with the real mn04 checkpoint and writing JSON lines that the tests read.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, require_module, shared_file

WEIGHTS = "models/mn04_as_mAP_432.pt"
CLIPS = ("audio/clips/speech.wav", "audio/clips/music.wav", "audio/clips/typing.wav")
SCENES = ("audio/scenes-dev/scene_00.wav", "audio/scenes-dev/scene_01.wav")
#: JSON lines round probabilities to 6 decimals; the engines may differ by float order only.
PROB_TOLERANCE = 2e-6


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A head and one worker node (1 CPU each) on this machine; this process is a driver
    (to find and kill replicas). Yields the cluster's address."""
    ray = require_module("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="soundwatch-tests", log_to_driver=False)
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()


def run_command(out: Path, sources: list[str], *extra: str) -> list[str]:
    command = [sys.executable, "-m", "soundwatch.cli", "run", "--pace", "fast"]
    for source in sources:
        command += ["--source", source]
    command += ["--weights", str(shared_file(WEIGHTS)), "--jsonl", str(out)]
    return [*command, "--publish", f"ipc://{out.with_suffix('.sock')}", *extra]


def run(out: Path, sources: list[str], *extra: str) -> list[dict]:
    result = subprocess.run(
        run_command(out, sources, *extra),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return read_lines(out)


def read_lines(path: Path) -> list[dict]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]


def tags_by_stream(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for record in records:
        if record["kind"] == "tags":
            out.setdefault(record["stream"], []).append(record)
    return out


def final_status(records: list[dict]) -> dict[str, dict]:
    return {r["stream"]: r for r in records if r["kind"] == "status" and r["ended"]}


def events_relative(records: list[dict]) -> list[tuple]:
    """Events as (stream, label, state, onset, offset) relative to the stream's first sample
    (each run has its own clock)."""
    origin = {s: tags[0]["t_start"] for s, tags in tags_by_stream(records).items()}
    return sorted(
        (
            r["stream"],
            r["label"],
            r["state"],
            round(r["onset"] - origin[r["stream"]], 3),
            None if r["offset"] is None else round(r["offset"] - origin[r["stream"]], 3),
        )
        for r in records
        if r["kind"] == "events"
    )


def test_engine_ray_without_ray_installed_says_how_to_install_it(monkeypatch) -> None:
    from soundwatch.errors import SoundwatchError
    from soundwatch.scale.engine import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    monkeypatch.setitem(sys.modules, "ray.serve", None)
    with pytest.raises(SoundwatchError, match=r"pip install 'soundwatch\[ray\]'"):
        require_ray()


def test_plain_run_and_the_client_never_import_ray() -> None:
    code = (
        "import sys, soundwatch.client, soundwatch.runner, soundwatch.cli, soundwatch.config; "
        "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, timeout=120)


def test_ray_engine_gives_the_local_probabilities_and_events(
    ray_cluster: str, tmp_path: Path
) -> None:
    sources = [f"{Path(c).stem}=file:{shared_file(c)}" for c in CLIPS]
    local = run(tmp_path / "local.jsonl", sources, "--engine", "local")
    remote = run(
        tmp_path / "ray.jsonl",
        sources,
        *("--engine", "ray", "--ray-address", ray_cluster, "--replicas", "2"),
    )
    local_tags, ray_tags = tags_by_stream(local), tags_by_stream(remote)
    assert sorted(ray_tags) == sorted(local_tags) == sorted(Path(c).stem for c in CLIPS)
    for stream, expected in local_tags.items():
        got = ray_tags[stream]
        assert [r["seq"] for r in got] == list(range(len(expected)))  # all, in order
        assert [r["t_end"] - r["t_start"] for r in got] == [
            r["t_end"] - r["t_start"] for r in expected
        ]
        probs = np.array([r["probs"] for r in got])
        assert np.abs(probs - np.array([r["probs"] for r in expected])).max() <= PROB_TOLERANCE
    assert events_relative(remote) == events_relative(local)
    assert events_relative(local), "the clips should raise some events"
    status = final_status(remote)
    for stream in local_tags:
        counters = status[stream]["counters"]
        assert counters["windows_tagged"] == len(local_tags[stream])
        assert counters["windows_failed"] == counters["windows_dropped"] == 0
    last = status[sorted(status)[0]]
    assert last["backend"].startswith("ray:")
    assert last["inference"]["engine_replicas"] == 2
    assert last["inference"]["engine_lost_windows"] == 0


def test_a_replica_killed_mid_run_is_survived_and_losses_counted(
    ray_cluster: str, tmp_path: Path
) -> None:
    import ray

    from soundwatch.scale.engine import app_prefix

    sources = [f"{Path(s).stem}=file:{shared_file(s)}" for s in SCENES]
    expected_windows = round((60.0 - 3.0) / 0.5) + 1  # 3 s windows every 0.5 s, per scene
    out = tmp_path / "kill.jsonl"
    command = run_command(
        out, sources, "--engine", "ray", "--ray-address", ray_cluster, "--replicas", "2"
    )
    log = tmp_path / "kill.log"
    with log.open("w") as stderr_file:
        process = subprocess.Popen(command, stderr=stderr_file)
    try:
        # Find the replicas while the deployment starts (listing actors takes a while; the
        # files are read fast, so the whole run may take only seconds), then kill one as
        # soon as tags flow: mid-run whatever the machine's speed.
        deadline = time.monotonic() + 300
        replicas: list[str] = []
        while len(replicas) < 2:
            assert process.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, f"2 replicas did not start: {replicas}"
            replicas = [
                a["name"]
                for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith(f"SERVE_REPLICA::{app_prefix(process.pid)}")
            ]
        assert len(replicas) == 2, replicas
        victim = ray.get_actor(replicas[0], namespace="serve")
        while not read_lines(out):
            assert process.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, "the ray run tagged nothing within 300 s"
            time.sleep(0.01)
        ray.kill(victim, no_restart=True)
        seen_at_kill = {s: len(t) for s, t in tags_by_stream(read_lines(out)).items()}
        process.wait(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, log.read_text()[-4000:]
    records = read_lines(out)
    tags, status = tags_by_stream(records), final_status(records)
    assert sorted(status) == sorted(Path(s).stem for s in SCENES)
    failed = 0
    # the kill came mid-run: windows were still to come (each stream has expected_windows)
    assert sum(seen_at_kill.values()) < len(SCENES) * expected_windows, seen_at_kill
    for stream, got in tags.items():
        counters = status[stream]["counters"]
        if seen_at_kill.get(stream, 0) < expected_windows:
            assert len(got) > seen_at_kill.get(stream, 0)  # windows kept coming after it
        assert [r["t_start"] for r in got] == sorted(r["t_start"] for r in got)  # in order
        assert len(got) == counters["windows_tagged"]  # nothing lost unseen
        # every window was tagged or counted as lost (a file waits: nothing dropped)
        assert counters["windows_tagged"] + counters["windows_failed"] == expected_windows
        assert counters["windows_dropped"] == 0
        failed += counters["windows_failed"]
    inference = status[Path(SCENES[0]).stem]["inference"]
    # the engine counts whole passes, as the pipeline does (the last stream to end saw all)
    lost = max(status[s]["inference"]["engine_lost_windows"] for s in status)
    assert failed == lost
    failures = max(status[s]["inference"]["inference_failures"] for s in status)
    assert (failed > 0) == (failures > 0)
    print(
        f"killed {replicas[0]}: retries {inference['engine_retries']}, "
        f"lost windows {failed}, replicas at the end {inference['engine_replicas']}"
    )


def test_ray_start_up_problems_are_refused_naming_the_fix(ray_cluster: str, tmp_path: Path) -> None:
    """A replica no node can hold (Serve would wait forever) and an address where nothing
    answers (Ray would retry for minutes): one line each, naming the fix."""
    config = tmp_path / "gpu.yaml"
    config.write_text("inference:\n  engine: ray\n  num_gpus: 1\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]  # nothing listens once the socket is closed
    for extra, message, fix in (
        (
            ("--config", str(config), "--ray-address", ray_cluster),
            "no node of the Ray cluster can hold a replica of 1 CPU and 1 GPU",
            "inference.num_gpus",
        ),
        (
            ("--engine", "ray", "--ray-address", f"127.0.0.1:{closed_port}"),
            f"nothing answers at the Ray address 127.0.0.1:{closed_port}",
            "ray start --head",
        ),
    ):
        command = run_command(tmp_path / "refused.jsonl", [f"file:{shared_file(CLIPS[0])}"], *extra)
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert result.returncode == 1, result.stderr[-2000:]
        assert message in result.stderr and fix in result.stderr
        assert "Traceback" not in result.stderr


def test_engine_passes_across_a_replica_kill_lose_nothing_and_keep_their_order(
    ray_cluster: str,
) -> None:
    """The engine in this process (a driver of the cluster): passes of 64 windows in 16
    requests keep both replicas busy; one is killed just after a pass was sent; every pass
    still returns the local worker's outputs row for row."""
    import ray

    from soundwatch.models import InferenceWorker, load_model
    from soundwatch.scale.config import InferenceConfig
    from soundwatch.scale.engine import RayEngine

    loaded = load_model("mn04", shared_file(WEIGHTS))
    config = InferenceConfig(engine="ray", replicas=2, num_cpus=0.5, chunk_windows=4)
    engine = RayEngine(loaded, config, device="cpu", backend="onnx")
    try:
        mels = np.random.default_rng(0).normal(-4.0, 2.0, (64, 128, 300)).astype(np.float32)
        expected = InferenceWorker(loaded, device="cpu", backend="onnx").infer(mels)
        replicas = [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"SERVE_REPLICA::{engine.app_name}#")
        ]
        assert len(replicas) == 2
        outputs: list = []
        passes = threading.Thread(
            target=lambda: outputs.extend(engine.infer(mels) for _ in range(8))
        )
        passes.start()
        deadline = time.monotonic() + 120
        while engine.counters()["engine_requests"] < 3 * 16:  # the third pass was just sent
            assert passes.is_alive() and time.monotonic() < deadline
            time.sleep(0.001)
        ray.kill(ray.get_actor(replicas[0], namespace="serve"), no_restart=True)
        passes.join(300)
        assert len(outputs) == 8
        counters = engine.counters()
    finally:
        engine.close()
    assert ray.is_initialized()  # the engine left this process's connection alone
    for probs, embeddings in outputs:
        assert np.abs(probs - expected[0]).max() <= 1e-6
        assert np.abs(embeddings - expected[1]).max() <= 1e-5
    alive = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    assert replicas[0] not in alive  # it did die mid-run
    # Ray Serve re-routes a request whose replica died before taking it; the engine resends
    # those that died with it once (engine_retries): either way none was lost
    print(f"killed mid-run: {counters}")
    assert counters["engine_lost_windows"] == 0
    assert counters["engine_requests"] == 8 * 16  # first sends; retries counted apart


def test_two_edges_through_serve_on_ray_match_one_local_run(
    ray_cluster: str, tmp_path: Path
) -> None:
    """2 edge processes -> ``serve --engine ray`` (2 replicas on the cluster) -> JSON lines
    == a single-process ``run`` on the same files, within the edge's float16 tolerance
    (docs/edge.md), events the same."""
    import signal

    from test_edge import FLOAT16_TOLERANCE

    clips = {"speech": shared_file(CLIPS[0]), "music": shared_file(CLIPS[1])}
    # --no-stagger on both sides: serve phases its streams in the order the edges connect
    specs = [f"{name}=file:{path}" for name, path in clips.items()]
    reference = run(tmp_path / "ref.jsonl", specs, "--no-stagger")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out, serve_log = tmp_path / "serve.jsonl", tmp_path / "serve.log"
    command = [
        *(sys.executable, "-m", "soundwatch.cli", "serve", "--listen", f"tcp://127.0.0.1:{port}"),
        *("--weights", str(shared_file(WEIGHTS)), "--jsonl", str(out)),
        *("--publish", f"ipc://{tmp_path / 'serve.sock'}", "--engine", "ray"),
        *("--ray-address", ray_cluster, "--replicas", "2", "--no-stagger"),
    ]
    with serve_log.open("w") as log:
        server = subprocess.Popen(command, cwd=REPO_ROOT, stderr=log)
    edges: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + 300
        while "listening for edges" not in serve_log.read_text():
            assert server.poll() is None and time.monotonic() < deadline, serve_log.read_text()
            time.sleep(0.05)
        for node, (name, path) in enumerate(clips.items()):
            with (tmp_path / f"edge{node}.log").open("w") as log:
                edges.append(
                    subprocess.Popen(
                        [
                            *(sys.executable, "-m", "soundwatch.cli", "edge", "--pace", "fast"),
                            *("--source", f"{name}=file:{path}", "--id", f"n{node}"),
                            *("--to", f"tcp://127.0.0.1:{port}", "--encoding", "float16"),
                        ],
                        cwd=REPO_ROOT,
                        stderr=log,
                    )
                )
        wanted = {f"n{node}-{name}" for node, name in enumerate(clips)}
        while set(final_status(read_lines(out))) != wanted:
            assert server.poll() is None and time.monotonic() < deadline, serve_log.read_text()
            time.sleep(0.05)
        for node, edge in enumerate(edges):
            assert edge.wait(timeout=60) == 0, (tmp_path / f"edge{node}.log").read_text()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=120) == 0, serve_log.read_text()[-4000:]
    finally:
        for process in (*edges, server):
            if process.poll() is None:
                process.kill()
                process.wait()
    records = read_lines(out)
    got, expected = tags_by_stream(records), tags_by_stream(reference)
    for node, name in enumerate(clips):
        ours = got[f"n{node}-{name}"]
        assert len(ours) == len(expected[name]) > 5
        np.testing.assert_allclose(
            [r["probs"] for r in ours],
            [r["probs"] for r in expected[name]],
            atol=FLOAT16_TOLERANCE,
            rtol=0,
        )
    renamed = [(stream.split("-", 1)[1], *rest) for stream, *rest in events_relative(records)]
    assert sorted(renamed) == events_relative(reference)
    status = final_status(records)["n0-speech"]
    assert status["backend"].startswith("ray:")
    assert status["inference"]["engine_replicas"] == 2
    assert status["counters"]["windows_failed"] == status["counters"]["windows_dropped"] == 0


def test_inference_config_places_replicas_and_refuses_bad_values() -> None:
    """Fixed replicas or autoscaling bounds become Serve's options; bad values name the key."""
    from soundwatch.config import parse_config
    from soundwatch.errors import SoundwatchError
    from soundwatch.scale.engine import deployment_options

    fixed = parse_config({"inference": {"engine": "ray", "replicas": 3, "num_gpus": 0.5}})
    options = deployment_options(fixed.inference)
    assert options["num_replicas"] == 3 and "autoscaling_config" not in options
    assert options["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.5}
    scaled = parse_config({"inference": {"replicas": {"min": 1, "max": 4}}}).inference
    autoscaling = deployment_options(scaled)["autoscaling_config"]
    assert (autoscaling["min_replicas"], autoscaling["max_replicas"]) == (1, 4)
    assert autoscaling["target_ongoing_requests"] == scaled.target_ongoing_requests
    for bad, named in (
        ({"replicas": {"min": 5, "max": 2}}, "min (5) is above max (2)"),
        ({"replicas": 0}, "replicas must be at least 1"),
        ({"ray_address": "my cluster"}, "is not a Ray address"),
        ({"engine": "spark"}, "inference.engine"),
    ):
        with pytest.raises(SoundwatchError, match=re.escape(named)):
            parse_config({"inference": bad})

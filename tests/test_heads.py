"""Custom-sound heads end to end with the real mn04: learned with ``soundwatch learn`` from
two typing examples, they tag a third typing clip and not speech (windows and events);
a head for another window or checkpoint, or a damaged file, is refused clearly; heads
dropped into a watched folder are loaded by a running soundwatch and reach its tags and
status, and a broken one is counted while the loaded heads go on."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from soundwatch.cli import main
from soundwatch.config import Config, apply_overrides
from soundwatch.errors import SoundwatchError
from soundwatch.heads import Backbone, Head, load_head
from soundwatch.heads.live import HeadBank, RunBackbone
from soundwatch.runner import Tagger, run_live


@pytest.fixture(scope="module")
def weights() -> Path:
    from conftest import shared_file

    return shared_file("models/mn04_as_mAP_432.pt")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """typing.wav cut in three (two examples, one to tag), and the other shared clips."""
    from conftest import shared_file

    out = tmp_path_factory.mktemp("clips")
    typing, rate = sf.read(shared_file("audio/clips/typing.wav"), dtype="float32")
    parts = {"typing1": (0, 4), "typing2": (4, 7), "typing3": (7, 10)}
    found = {}
    for name, (lo, hi) in parts.items():
        found[name] = out / f"{name}.wav"
        sf.write(found[name], typing[lo * rate : hi * rate], rate)
    for name in ("speech", "music", "metro_station-paris"):
        found[name] = shared_file(f"audio/clips/{name}.wav")
    return found


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.stdout


@pytest.fixture(scope="module")
def head_file(tmp_path_factory, clips, weights) -> Path:
    out = tmp_path_factory.mktemp("heads") / "home.swhead"
    table = cli(
        "learn", "home",
        "--examples", f"typing={clips['typing1']}",
        "--examples", f"typing={clips['typing2']}",
        "--negatives", str(clips["metro_station-paris"]),
        "--negatives", str(clips["music"]),
        "--weights", str(weights), "--backend", "torch", "--threads", "2", "--out", str(out),
    )  # fmt: skip
    assert "typing" in table and "(negatives)" in table
    return out


def tag_json(path: Path, weights: Path, head: Path, *extra: str) -> list[dict]:
    args = ["tag", str(path), "--weights", str(weights), "--backend", "torch"]
    out = cli(*args, "--threads", "2", "--head", str(head), "--json", *extra)
    return [json.loads(line) for line in out.splitlines()]


def test_a_head_from_two_typing_examples_tags_a_third_and_not_speech(
    head_file, clips, weights
) -> None:
    head = load_head(head_file)
    assert head.labels == ["typing"] and head.backbone.model == "mn04"
    (threshold,) = head.thresholds.tolist()
    assert 0.05 <= threshold <= 0.95
    typing = [w["head"]["typing"] for w in tag_json(clips["typing3"], weights, head_file)]
    speech = [w["head"]["typing"] for w in tag_json(clips["speech"], weights, head_file)]
    assert typing and min(typing) >= threshold, (typing, threshold)
    # speech.wav holds a few mouse clicks (the AudioSet model hears "Clicking" at 5-9 s):
    # a window there may come close, but the clip as a whole is not typing.
    assert np.median(speech) < threshold / 2, (speech, threshold)
    assert np.mean(np.array(speech) >= threshold) <= 0.1, (speech, threshold)

    events = {
        name: [e["label"] for e in tag_json(clips[name], weights, head_file, "--events")]
        for name in ("typing3", "speech")
    }
    assert "typing" in events["typing3"]
    assert "typing" not in events["speech"] and "speech" in events["speech"]


def test_heads_for_another_window_or_checkpoint_and_damaged_files_are_refused(
    head_file, clips, weights, tmp_path
) -> None:
    args = ["tag", str(clips["typing3"]), "--weights", str(weights), "--window", "2.0"]
    result = CliRunner().invoke(main, [*args, "--backend", "torch", "--head", str(head_file)])
    assert result.exit_code == 1
    assert "learned on 3.0 s windows, but this run tags 2.0 s windows" in result.output
    assert "--window 3.0" in result.output

    head = load_head(head_file)
    with pytest.raises(SoundwatchError, match="learned on model mn04, but this run uses mn10"):
        head.check_compatible("mn10", head.backbone.weights_sha256, 3.0)
    with pytest.raises(SoundwatchError, match="another mn04 checkpoint"):
        head.check_compatible("mn04", "0" * 64, 3.0)

    with np.load(head_file) as z:
        contents = {name: z[name] for name in z.files}
    contents["w0"] = contents["w0"] * 2  # an edited weight in an otherwise valid archive
    with open(tmp_path / "edited.swhead", "wb") as fh:
        np.savez(fh, **contents)
    with pytest.raises(SoundwatchError, match="fails its checksum"):
        load_head(tmp_path / "edited.swhead")
    data = bytearray(head_file.read_bytes())
    needle = np.ascontiguousarray(contents["w0"] / 2, "<f4").tobytes()[:64]
    at = bytes(data).index(needle)  # flip a stored weight's bytes: the zip's CRC fails
    data[at : at + 4] = np.float32(123.0).tobytes()
    (tmp_path / "damaged.swhead").write_bytes(bytes(data))
    with pytest.raises(SoundwatchError, match="is damaged"):
        load_head(tmp_path / "damaged.swhead")
    (tmp_path / "not.swhead").write_text("hello")
    with pytest.raises(SoundwatchError, match="not a soundwatch head file"):
        load_head(tmp_path / "not.swhead")


def test_head_file_round_trip_and_label_rules(tmp_path) -> None:
    rng = np.random.default_rng(0)
    backbone = Backbone("mn04", "ab" * 32, 8, 3.0)
    head = Head(
        name="demo",
        labels=["a", "b-2"],
        thresholds=np.array([0.3, 0.6], np.float32),
        mean=rng.standard_normal(8).astype(np.float32),
        scale=np.ones(8, np.float32),
        weights=[rng.standard_normal(s).astype(np.float32) for s in ((8, 4), (4, 2))],
        biases=[np.zeros(4, np.float32), np.zeros(2, np.float32)],
        backbone=backbone,
    )
    loaded = load_head(head.save(tmp_path / "demo.swhead"))
    x = rng.standard_normal((5, 8)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x), head.predict(x), rtol=1e-6)
    assert loaded.labels == ["a", "b-2"] and loaded.backbone == backbone
    with pytest.raises(SoundwatchError, match="head label 'door bell' is not valid"):
        dataclasses.replace(head, labels=["door bell", "b"])

    # A head that also reads the AudioSet probabilities (what `learn` makes): 8 + 3 inputs.
    wide = Backbone("mn04", "ab" * 32, 8, 3.0, num_classes=3)
    head = dataclasses.replace(
        head,
        backbone=wide,
        inputs="embedding+sqrt_probs",
        mean=np.zeros(11, np.float32),
        scale=np.ones(11, np.float32),
        weights=[rng.standard_normal((11, 2)).astype(np.float32)],
        biases=[np.zeros(2, np.float32)],
    )
    loaded = load_head(head.save(tmp_path / "wide.swhead"))
    probs = rng.uniform(0, 1, (5, 3)).astype(np.float32)
    expected = 1 / (1 + np.exp(-(np.concatenate([x, np.sqrt(probs)], 1) @ head.weights[0])))
    np.testing.assert_allclose(loaded.predict(x, probs), expected, rtol=1e-5)
    assert loaded.inputs == "embedding+sqrt_probs" and loaded.backbone == wide
    with pytest.raises(SoundwatchError, match="needs the window's probabilities"):
        loaded.predict(x)


def read_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def test_heads_dropped_into_a_watched_folder_load_while_running(
    head_file, clips, weights, tmp_path
) -> None:
    folder = tmp_path / "heads"
    folder.mkdir()
    jsonl = tmp_path / "out.jsonl"
    config = apply_overrides(
        Config(),
        {
            "model.weights": str(weights),
            "model.threads": 2,
            "model.backend": "torch",
            "sources": [{"id": "desk", "spec": f"file:{clips['typing3']}", "loop": True}],
            "publish.endpoints": [],
            "publish.jsonl": str(jsonl),
            "publish.status_interval": 0.5,
            "heads.paths": [str(folder)],
            "heads.watch": 0.1,
        },
    )
    tagger = Tagger.from_config(config)
    head = load_head(head_file)
    wrong = dataclasses.replace(
        head, name="other", backbone=dataclasses.replace(head.backbone, window_s=1.0)
    )
    failures: list[BaseException] = []
    seen: dict[str, object] = {}

    def wait_for(what: str, found) -> dict:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            for message in read_lines(jsonl):
                if found(message):
                    return message
            time.sleep(0.05)
        raise AssertionError(f"no {what} within 90 s")

    def drive(pipeline, endpoints, notes) -> None:
        def steps() -> None:
            try:
                first = wait_for("tags", lambda m: m["kind"] == "tags")
                seen["before"] = first["head"]
                shutil.copy(head_file, folder / "home.swhead")
                seen["loaded"] = wait_for(
                    "tags with the head", lambda m: m["kind"] == "tags" and "typing" in m["head"]
                )
                seen["status"] = wait_for(
                    "status with the head's group",
                    lambda m: m["kind"] == "status" and "typing" in m["groups"],
                )
                wrong.save(folder / "other.swhead")
                seen["error"] = wait_for(
                    "a counted load error",
                    lambda m: m["kind"] == "status" and m["counters"]["heads_load_errors"] >= 1,
                )
                count = len(read_lines(jsonl))
                seen["after"] = wait_for(
                    "tags after the failed load",
                    lambda m: m["kind"] == "tags" and m["seq"] > count and "typing" in m["head"],
                )
            except BaseException as error:
                failures.append(error)
            finally:
                pipeline.stop()

        threading.Thread(target=steps, daemon=True).start()

    run_live(config, tagger=tagger, on_ready=drive, install_signal_handlers=False)
    assert not failures, failures
    assert seen["before"] == {}
    loaded = seen["loaded"]
    assert loaded["head"]["typing"] >= head.thresholds[0]
    assert "typing" in loaded["groups"]  # smoothed score beside the event groups
    assert seen["status"]["groups"]["typing"] == pytest.approx(float(head.thresholds[0]))
    assert seen["error"]["counters"]["heads_labels"] == 1  # the good head stays loaded


def test_a_head_label_that_repeats_an_event_group_is_refused(head_file, tmp_path) -> None:
    head = load_head(head_file)
    clash = dataclasses.replace(head, name="clash", labels=["speech"])
    clash.save(tmp_path / "clash.swhead")
    b = head.backbone
    with pytest.raises(SoundwatchError, match="also an event group's name"):
        HeadBank(
            [tmp_path / "clash.swhead"],
            RunBackbone(b.model, b.weights_sha256, b.window_s),
            reserved=["speech", "music"],
        )


def small_head(name: str, labels: list[str], inputs: str, seed: int) -> Head:
    """A hand-made head on 8-dim embeddings (and 3 AudioSet classes when it reads them)."""
    rng = np.random.default_rng(seed)
    width = 8 + (3 if inputs == "embedding+sqrt_probs" else 0)
    return Head(
        name=name,
        labels=labels,
        thresholds=np.full(len(labels), 0.5, np.float32),
        mean=rng.standard_normal(width).astype(np.float32),
        scale=rng.uniform(0.5, 2, width).astype(np.float32),
        weights=[rng.standard_normal((width, len(labels))).astype(np.float32)],
        biases=[rng.standard_normal(len(labels)).astype(np.float32)],
        backbone=Backbone("mn04", "ab" * 32, 8, 3.0, num_classes=3),
        inputs=inputs,
    )


def test_a_bank_builds_each_windows_features_once_for_all_its_heads(tmp_path, monkeypatch) -> None:
    import soundwatch.heads.live as live

    heads = [
        small_head("a", ["a1", "a2"], "embedding+sqrt_probs", 1),
        small_head("b", ["b1"], "embedding+sqrt_probs", 2),
        small_head("c", ["c1", "c2", "c3"], "embedding", 3),
    ]
    for head in heads:
        head.save(tmp_path / f"{head.name}.swhead")
    bank = HeadBank([tmp_path], RunBackbone("mn04", "ab" * 32, 3.0))
    assert bank.labels == ["a1", "a2", "b1", "c1", "c2", "c3"]
    built: list[str] = []

    def counting(embeddings, probs, inputs):
        built.append(inputs)
        return live_features(embeddings, probs, inputs)

    live_features = live.head_features
    monkeypatch.setattr(live, "head_features", counting)
    rng = np.random.default_rng(0)
    embedding = rng.standard_normal((4, 8)).astype(np.float32)
    probs = rng.uniform(0, 1, (4, 3)).astype(np.float32)
    stacked = bank.predict(embedding, probs)
    assert sorted(built) == ["embedding", "embedding+sqrt_probs"]  # once per kind, not head
    expected = np.concatenate([h.predict(embedding, probs) for h in heads], axis=-1)
    np.testing.assert_allclose(stacked, expected, rtol=1e-6)
    np.testing.assert_allclose(bank.predict(embedding[0], probs[0]), expected[0], rtol=1e-6)


def test_a_format_1_head_file_still_loads_and_an_unknown_version_is_refused(tmp_path) -> None:
    """Heads saved before format 2 (embedding only, no ``inputs`` key) load as such; a file
    of a newer format says to learn the head again."""
    import json

    from soundwatch.heads import fileformat

    head = small_head("old", ["x"], "embedding", 4)
    with np.load(head.save(tmp_path / "new.swhead")) as z:
        contents = {name: z[name] for name in z.files}
    meta = json.loads(contents.pop("meta").tobytes().decode())

    def write(path: Path, version: int) -> Path:
        old = {k: v for k, v in meta.items() if k not in ("sha256", "inputs")}
        old["version"] = version
        old["backbone"] = {k: v for k, v in old["backbone"].items() if k != "num_classes"}
        old["sha256"] = fileformat._digest(old, contents)
        raw = np.frombuffer(json.dumps(old).encode(), np.uint8)
        with open(path, "wb") as fh:
            np.savez(fh, meta=raw, **contents)
        return path

    loaded = load_head(write(tmp_path / "v1.swhead", 1))
    assert loaded.inputs == "embedding" and loaded.backbone.num_classes == 0
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x), head.predict(x), rtol=1e-6)
    with pytest.raises(SoundwatchError, match="format version 99; this soundwatch reads"):
        load_head(write(tmp_path / "v99.swhead", 99))


def test_embed_writes_each_windows_embedding_as_json_and_npz(tmp_path, clips, weights) -> None:
    """``soundwatch embed``: one record per window with the backbone's embedding (its passes
    split like run's), the same numbers in --json and --npy, and the worker's own output."""
    clip = clips["typing3"]  # 3 s
    lines = cli("embed", str(clip), "--weights", str(weights), "--backend", "torch", "--json")
    records = [json.loads(line) for line in lines.splitlines()]
    assert records and all(len(r["embedding"]) == 384 for r in records)
    assert [r["t_start"] for r in records] == sorted(r["t_start"] for r in records)
    npz = tmp_path / "typing3.npz"
    cli("embed", str(clip), "--weights", str(weights), "--backend", "torch", "--npy", str(npz))
    with np.load(npz) as saved:
        meta = json.loads(saved["meta"].tobytes())
        embeddings, times = saved["embeddings_0"], saved["times_0"]
    assert meta["model"] == "mn04" and meta["files"] == [str(clip)]
    assert embeddings.shape == (len(records), 384) and times.shape == (len(records), 2)
    np.testing.assert_allclose(embeddings, [r["embedding"] for r in records], atol=1e-5)
    config = apply_overrides(Config(), {"model.weights": weights, "model.backend": "torch"})
    worker = Tagger.from_config(config).worker
    audio, rate = sf.read(clip, dtype="float32")
    assert rate == 32000
    from soundwatch.dsp import logmel

    mel = logmel(audio)[None, :, :300]  # the first window: the clip's first 300 frames
    _, expected = worker.infer(mel)
    np.testing.assert_allclose(embeddings[0], expected[0], atol=1e-4)

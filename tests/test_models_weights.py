"""Weights and labels: resolution order, downloads (over loopback HTTP), clear errors."""

from __future__ import annotations

import functools
import http.server
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from soundwatch.errors import SoundwatchError
from soundwatch.models import (
    LABELS_FILE,
    ONTOLOGY_FILE,
    default_cache_dir,
    load_model,
    read_class_labels,
    read_ontology,
    resolve_bundle_file,
)
from soundwatch.models.weights import CACHE_ENV, WEIGHTS_URL_ENV

MN04_FILE = "mn04_as_mAP_432.pt"
MN04_SHA256 = "899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _TruncatingHandler(http.server.BaseHTTPRequestHandler):
    """Announces 1000 bytes, sends 100, hangs up."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"x" * 100)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def http_server(handler) -> Iterator[str]:
    """A loopback HTTP server in a thread; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def serving(directory: Path):
    return http_server(functools.partial(_QuietHandler, directory=str(directory)))


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def bundle(shared, tmp_path: Path) -> Path:
    """A directory holding a copy of the mn04 checkpoint and its labels."""
    directory = tmp_path / "bundle"
    directory.mkdir()
    for name in (MN04_FILE, LABELS_FILE):
        shutil.copy(shared(f"models/{name}"), directory / name)
    return directory


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test may see the user's cache or a URL override from the environment."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "default-cache"))
    monkeypatch.delenv(WEIGHTS_URL_ENV, raising=False)
    monkeypatch.delenv("SOUNDWATCH_BUNDLE_URL", raising=False)


def test_explicit_weights_path_with_labels_beside(shared, tmp_path: Path) -> None:
    loaded = load_model("mn04", shared(f"models/{MN04_FILE}"), tmp_path / "c", download=False)
    assert loaded.name == "mn04"
    assert loaded.sha256 == MN04_SHA256
    assert loaded.weights_path == shared(f"models/{MN04_FILE}")
    assert len(loaded.labels) == len(loaded.mids) == 527
    assert loaded.labels[0] == "Speech" and loaded.mids[0] == "/m/09x0r"
    assert loaded.labels[1] == "Male speech, man speaking"  # quoted CSV field with a comma
    assert not loaded.model.training
    assert not (tmp_path / "c").exists()  # nothing downloaded or cached


def test_weights_directory_and_missing_file(bundle: Path, tmp_path: Path) -> None:
    loaded = load_model("mn04", bundle, tmp_path / "c", download=False)
    assert loaded.weights_path == bundle / MN04_FILE
    with pytest.raises(SoundwatchError, match=r"does not exist.*--weights"):
        load_model("mn04", tmp_path / "nope.pt", download=False)


def test_labels_missing_beside_weights_and_offline(bundle: Path, tmp_path: Path) -> None:
    (bundle / LABELS_FILE).unlink()
    with pytest.raises(SoundwatchError) as err:
        load_model("mn04", bundle / MN04_FILE, tmp_path / "c", download=False)
    message = str(err.value)
    assert LABELS_FILE in message and "raw.githubusercontent.com" in message
    assert str(tmp_path / "c" / LABELS_FILE) in message


def test_cache_dir_from_environment(
    bundle: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(bundle))
    assert default_cache_dir() == bundle
    loaded = load_model("mn04", download=False)
    assert loaded.weights_path == bundle / MN04_FILE
    assert loaded.sha256 == MN04_SHA256


def test_not_cached_and_downloads_off(tmp_path: Path) -> None:
    with pytest.raises(SoundwatchError) as err:
        load_model("mn10", cache_dir=tmp_path / "c", download=False)
    message = str(err.value)
    assert "mn10_as_mAP_471.pt" in message
    assert "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/" in message
    assert str(tmp_path / "c" / "mn10_as_mAP_471.pt") in message
    assert "--weights" in message


def test_download_writes_atomically_with_sha_and_progress(
    bundle: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    with serving(bundle) as url:
        loaded = load_model("mn04", cache_dir=cache, base_url=url, labels_base_url=url)
    assert loaded.weights_path == cache / MN04_FILE
    assert loaded.sha256 == MN04_SHA256
    assert (cache / f"{MN04_FILE}.sha256").read_text().split()[0] == MN04_SHA256
    assert (cache / LABELS_FILE).read_bytes() == (bundle / LABELS_FILE).read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [MN04_FILE, f"{MN04_FILE}.sha256", LABELS_FILE, f"{LABELS_FILE}.sha256"]
    )  # no temporary files left behind
    progress = capfd.readouterr().err
    assert MN04_FILE in progress and "100%" in progress
    # the server is gone: the second load is served from the cache
    again = load_model("mn04", cache_dir=cache, download=False)
    assert again.weights_path == cache / MN04_FILE


def test_download_base_url_from_environment(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(bundle / LABELS_FILE, cache / LABELS_FILE)
    with serving(bundle) as url:
        monkeypatch.setenv(WEIGHTS_URL_ENV, url.rstrip("/"))
        loaded = load_model("mn04", cache_dir=cache)
    assert loaded.weights_path == cache / MN04_FILE


@pytest.mark.parametrize("server", ["closed", "404"])
def test_offline_error_names_file_url_and_place(server: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SoundwatchError) as err:
        if server == "closed":
            load_model("mn04", cache_dir=cache, base_url=closed_port_url())
        else:
            with serving(empty) as url:
                load_model("mn04", cache_dir=cache, base_url=url)
    message = str(err.value)
    assert f"/{MN04_FILE}" in message  # the URL
    assert str(cache / MN04_FILE) in message  # where to put it
    assert "--weights" in message
    assert not cache.exists() or list(cache.iterdir()) == []  # no partial files


def test_truncated_download_leaves_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with http_server(_TruncatingHandler) as url, pytest.raises(SoundwatchError) as err:
        load_model("mn04", cache_dir=cache, base_url=url)
    assert MN04_FILE in str(err.value)
    assert list(cache.iterdir()) == []


def test_download_with_wrong_hash_is_rejected(shared, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(shared("golden/mn02_seed5_T1000.state_dict.pt"), served / MN04_FILE)
    cache = tmp_path / "cache"
    with serving(served) as url, pytest.raises(SoundwatchError, match="sha256"):
        load_model("mn04", cache_dir=cache, base_url=url)
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_damaged_checkpoint(damage: str, bundle: Path) -> None:
    path = bundle / MN04_FILE
    data = path.read_bytes()
    damaged = {"garbage": b"not a checkpoint" * 100, "truncated": data[:500_000], "empty": b""}
    path.write_bytes(damaged[damage])
    with pytest.raises(SoundwatchError, match=r"cannot read .*mn04_as_mAP_432\.pt.*mn04"):
        load_model("mn04", path, download=False)


def test_wrong_architecture_checkpoint(shared, bundle: Path) -> None:
    path = bundle / "other.pt"
    shutil.copy(shared("golden/mn02_seed5_T1000.state_dict.pt"), path)
    with pytest.raises(SoundwatchError) as err:
        load_model("mn04", path, download=False)
    message = str(err.value)
    assert "does not hold mn04 weights" in message
    assert "shapes differ" in message and "features." in message
    shutil.copy(shared("golden/dymn04_seed11_T300.state_dict.pt"), path)
    with pytest.raises(SoundwatchError, match=r"does not hold mn04 weights.*missing keys"):
        load_model("mn04", path, download=False)


def test_wrapped_state_dict_is_rejected(bundle: Path) -> None:
    path = bundle / "wrapped.pt"
    torch.save({"model": torch.load(bundle / MN04_FILE, weights_only=True)}, path)
    with pytest.raises(SoundwatchError, match=r"not a plain state dict.*keys 'model'.*mn04"):
        load_model("mn04", path, download=False)
    torch.save([1, 2, 3], path)
    with pytest.raises(SoundwatchError, match="not a plain state dict"):
        load_model("mn04", path, download=False)


def test_cached_file_changed_since_download(bundle: Path) -> None:
    (bundle / f"{MN04_FILE}.sha256").write_text("0" * 64 + f"  {MN04_FILE}\n")
    with pytest.raises(SoundwatchError, match=r"damaged.*Delete"):
        load_model("mn04", cache_dir=bundle, download=False)


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda lines: ["idx,mid,name", *lines[1:]], "header"),
        (lambda lines: lines[:-1], "526 classes"),
        (lambda lines: [lines[0], lines[2], lines[1], *lines[3:]], "line 2"),
    ],
)
def test_bad_labels_file(edit, problem: str, bundle: Path) -> None:
    path = bundle / LABELS_FILE
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")
    with pytest.raises(SoundwatchError, match=problem):
        read_class_labels(path)
    with pytest.raises(SoundwatchError, match=problem):
        load_model("mn04", bundle / MN04_FILE, download=False)


def test_ontology_bundle_file(shared, tmp_path: Path) -> None:
    near = shared(f"models/{ONTOLOGY_FILE}").parent
    path = resolve_bundle_file(ONTOLOGY_FILE, near, cache_dir=tmp_path, download=False)
    ontology = read_ontology(path)
    assert len(ontology) == 632
    labels = read_class_labels(resolve_bundle_file(LABELS_FILE, near, download=False))
    assert all(mid in ontology for mid in labels.mids)
    with pytest.raises(SoundwatchError, match="unknown bundle file"):
        resolve_bundle_file("weights.bin", near)
    with pytest.raises(SoundwatchError, match=r"ontology\.json.*audioset/ontology"):
        resolve_bundle_file(ONTOLOGY_FILE, tmp_path, cache_dir=tmp_path, download=False)

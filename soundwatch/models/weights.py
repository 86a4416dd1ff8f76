"""Finding, downloading and checking model files: checkpoints and their label bundle.

A model bundle is a checkpoint plus ``class_labels_indices.csv`` (and, for the events
feature, the AudioSet ``ontology.json``). Each file is looked up, in order:

1. an explicit path (checkpoints: ``--weights``) or, for bundle files, beside the weights;
2. the cache directory: ``$SOUNDWATCH_CACHE`` or the platform's user cache dir for
   "soundwatch" (e.g. ``~/.cache/soundwatch``);
3. a download into the cache directory, from the official EfficientAT release (override
   the base URL with ``$SOUNDWATCH_WEIGHTS_URL``; bundle files: ``$SOUNDWATCH_BUNDLE_URL``).

Downloads are written to a temporary file in the cache directory and moved into place
with ``os.replace`` once complete, so a cut connection never leaves a half file under the
real name; the sha256 of each download is written beside it as ``<file>.sha256`` and
checked again whenever the cached file is used.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs

from soundwatch.errors import SoundwatchError
from soundwatch.model_catalog import model_spec

if TYPE_CHECKING:  # torch loads only to read a checkpoint: a start from a cached ONNX
    from torch import Tensor, nn  # export needs no torch (docs/performance.md, start-up)

OFFICIAL_WEIGHTS_URL = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/"
WEIGHTS_URL_ENV = "SOUNDWATCH_WEIGHTS_URL"
BUNDLE_URL_ENV = "SOUNDWATCH_BUNDLE_URL"
CACHE_ENV = "SOUNDWATCH_CACHE"

LABELS_FILE = "class_labels_indices.csv"
ONTOLOGY_FILE = "ontology.json"
OFFICIAL_BUNDLE_URLS: dict[str, str] = {
    LABELS_FILE: (
        "https://raw.githubusercontent.com/fschmid56/EfficientAT/main/metadata/" + LABELS_FILE
    ),
    ONTOLOGY_FILE: "https://raw.githubusercontent.com/audioset/ontology/master/" + ONTOLOGY_FILE,
}

KNOWN_SHA256: dict[str, str] = {
    # release files are immutable: a download with another hash is damaged or not the file
    "mn04_as_mAP_432.pt": "899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c",
}

DOWNLOAD_TIMEOUT_S = 30.0
_CHUNK = 1 << 16


def default_cache_dir() -> Path:
    """``$SOUNDWATCH_CACHE`` if set, else the user cache directory for "soundwatch"."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("soundwatch"))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha_sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _check_sidecar(path: Path) -> str:
    """Hash ``path``; if a ``.sha256`` sidecar exists, insist it matches."""
    digest = sha256_file(path)
    sidecar = _sha_sidecar(path)
    if sidecar.is_file():
        fields = sidecar.read_text().split()
        recorded = fields[0] if fields else ""
        if recorded != digest:
            raise SoundwatchError(
                f"{path} does not match the sha256 recorded when it was downloaded "
                f"({sidecar}); the file is damaged. Delete both files to download it again."
            )
    return digest


def temporary_sibling(dest: Path) -> Path:
    """A fresh hidden ``.part`` path beside ``dest`` (same file system, so ``os.replace``
    is atomic); creates the directory. Files created there get the usual umask permissions.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.part")


def download_file(url: str, dest: Path, *, expected_sha256: str | None = None) -> str:
    """Download ``url`` to ``dest`` atomically with a progress bar; return its sha256.

    Raises :class:`urllib.error.URLError`/:class:`OSError` on network failure and
    :class:`SoundwatchError` on a truncated or hash-mismatching download; ``dest`` is
    untouched in all failure cases.
    """
    from tqdm import tqdm

    tmp = temporary_sibling(dest)
    try:
        digest = hashlib.sha256()
        received = 0
        with (
            open(tmp, "xb") as out,
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
        ):
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if total is not None and received != total:
            raise SoundwatchError(
                f"download of {url} was cut off ({received} of {total} bytes); try again"
            )
        sha = digest.hexdigest()
        if expected_sha256 is not None and sha != expected_sha256:
            raise SoundwatchError(
                f"download of {url} has sha256 {sha}, expected {expected_sha256}; "
                "the server sent a different or damaged file"
            )
        os.replace(tmp, dest)
        _sha_sidecar(dest).write_text(f"{sha}  {dest.name}\n")
        return sha
    finally:
        tmp.unlink(missing_ok=True)


def _fetch(url: str, dest: Path, what: str, hint: str, expected_sha256: str | None) -> None:
    """Download with a user-facing error naming the file, the URL and where to put it."""
    try:
        download_file(url, dest, expected_sha256=expected_sha256)
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise SoundwatchError(
            f"could not download {what} {dest.name} from {url} ({reason}). "
            f"Download it yourself and put it at {dest}{hint}."
        ) from None


def _weights_base_url(base_url: str | None) -> str:
    base = base_url or os.environ.get(WEIGHTS_URL_ENV) or OFFICIAL_WEIGHTS_URL
    return base if base.endswith("/") else base + "/"


def weights_url(name: str, base_url: str | None = None) -> str:
    """Download URL of ``name``'s AudioSet checkpoint."""
    return _weights_base_url(base_url) + model_spec(name).release_file


def resolve_weights(
    name: str,
    weights: str | Path | None = None,
    *,
    cache_dir: Path | None = None,
    download: bool = True,
    base_url: str | None = None,
) -> tuple[Path, str]:
    """Locate (or download) ``name``'s checkpoint; return ``(path, sha256)``.

    ``weights`` may be the checkpoint file or a directory holding the release file.
    """
    release_file = model_spec(name).release_file
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_dir():
            path = path / release_file
        if not path.is_file():
            raise SoundwatchError(
                f"weights file {path} does not exist; pass the path of {release_file} "
                f"(the {name} checkpoint) to --weights"
            )
        return path, _check_sidecar(path)

    cache = cache_dir if cache_dir is not None else default_cache_dir()
    cached = cache / release_file
    if cached.is_file():
        return cached, _check_sidecar(cached)

    url = weights_url(name, base_url)
    hint = f", or pass its path with --weights (set {CACHE_ENV} to use another cache directory)"
    if not download:
        raise SoundwatchError(
            f"the {name} checkpoint {release_file} is not in the cache ({cached}) and "
            f"downloads are off. Download it from {url} and put it at {cached}{hint}."
        )
    _fetch(url, cached, f"the {name} checkpoint", hint, KNOWN_SHA256.get(release_file))
    return cached, _check_sidecar(cached)


def resolve_bundle_file(
    name: str,
    near: Path | None = None,
    *,
    cache_dir: Path | None = None,
    download: bool = True,
    base_url: str | None = None,
) -> Path:
    """Locate a bundle file (``class_labels_indices.csv`` or ``ontology.json``).

    Looked up in ``near`` (the weights' directory), then the cache dir, then downloaded
    into the cache dir from its official source (or ``base_url``/``$SOUNDWATCH_BUNDLE_URL``
    + name).
    """
    if name not in OFFICIAL_BUNDLE_URLS:
        raise SoundwatchError(
            f"unknown bundle file {name!r}; expected one of {', '.join(OFFICIAL_BUNDLE_URLS)}"
        )
    if near is not None and (Path(near) / name).is_file():
        return Path(near) / name
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    cached = cache / name
    if cached.is_file():
        _check_sidecar(cached)
        return cached
    base = base_url or os.environ.get(BUNDLE_URL_ENV)
    url = (
        (base if base.endswith("/") else base + "/") + name if base else OFFICIAL_BUNDLE_URLS[name]
    )
    where = f" (or beside the weights file, in {near})" if near is not None else ""
    if not download:
        raise SoundwatchError(
            f"{name} is not in the cache ({cached}) and downloads are off. "
            f"Download it from {url} and put it at {cached}{where}."
        )
    _fetch(url, cached, "the model bundle file", where, None)
    return cached


def read_checkpoint(path: Path, name: str) -> dict[str, Tensor]:
    """Read a checkpoint's state dict safely (``weights_only``); clear error if unreadable."""
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        raise SoundwatchError(
            f"cannot read {path} as a PyTorch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); the file is damaged, "
            f"truncated or not a checkpoint. Expected {model_spec(name).release_file} "
            f"({name} weights); delete it to download it again or pass another --weights"
        ) from None
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        got = type(loaded).__name__
        if isinstance(loaded, Mapping):
            got += " with keys " + ", ".join(repr(k) for k in list(loaded)[:3])
        raise SoundwatchError(
            f"{path} is not a plain state dict of tensors (got a {got}); this file does not "
            f"hold {name} weights as published ({model_spec(name).release_file})"
        )
    return dict(loaded)


def load_weights_strict(
    model: nn.Module, state_dict: Mapping[str, Tensor], name: str, path: Path
) -> None:
    """Load ``state_dict`` into ``model`` strictly, explaining any mismatch by architecture."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys, e.g. {', '.join(missing[:3])}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys, e.g. {', '.join(unexpected[:3])}")
        if mismatched:
            examples = "; ".join(mismatched[:3])
            problems.append(f"{len(mismatched)} shapes differ (file vs {name}), e.g. {examples}")
        raise SoundwatchError(
            f"{path} does not hold {name} weights (expected {len(expected)} tensors of the "
            f"{name} architecture, {model_spec(name).release_file}; got {'; '.join(problems)}). "
            "Pass the checkpoint that matches the model name."
        )
    model.load_state_dict(state_dict, strict=True)

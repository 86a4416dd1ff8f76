"""CURVE key files in pyzmq's certificate format (``NAME.key`` public, ``NAME.key_secret``).

A secret key is the identity of a server or client: a file that other users can read is
refused, with the ``chmod`` that fixes it, rather than used.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import zmq.auth

from soundwatch.errors import SoundwatchError

log = logging.getLogger(__name__)

SECRET_SUFFIX = ".key_secret"
PUBLIC_SUFFIX = ".key"


def generate_keys(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``DIR/NAME.key`` (public, 0644) and ``DIR/NAME.key_secret`` (secret, 0600).

    Refuses to overwrite an existing pair: replacing a key locks out whoever holds it.
    """
    if not name or "/" in name or name.startswith("."):
        raise SoundwatchError(f"bad key name {name!r}: use a plain file name such as 'server'")
    directory = Path(directory)
    public, secret = directory / f"{name}{PUBLIC_SUFFIX}", directory / f"{name}{SECRET_SUFFIX}"
    for path in (public, secret):
        if path.exists():
            raise SoundwatchError(
                f"{path} exists already; pick another --name or remove the old pair first "
                "(whoever uses it loses access)"
            )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        previous = os.umask(0o077)  # the secret file is never readable by others, not even once
        try:
            zmq.auth.create_certificates(directory, name)
        finally:
            os.umask(previous)
        public.chmod(0o644)
        secret.chmod(0o600)
    except OSError as error:
        raise SoundwatchError(f"cannot write keys in {directory}: {error.strerror}") from None
    return public, secret


def load_secret_key(path: str | Path) -> tuple[bytes, bytes]:
    """``(public, secret)`` z85 keys from a ``.key_secret`` file that only its owner reads."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise SoundwatchError(
            f"secret key {path} does not exist; create a pair with: soundwatch keys generate DIR"
        ) from None
    except OSError as error:
        raise SoundwatchError(f"cannot read secret key {path}: {error.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SoundwatchError(
            f"secret key {path} is readable by other users (mode {stat.S_IMODE(mode):04o}); "
            f"refusing to use it: run  chmod 600 {path}"
        )
    public, secret = _load(path)
    if secret is None:
        raise SoundwatchError(
            f"{path} holds no secret key (is it the public .key file?); pass the "
            f"{SECRET_SUFFIX} file"
        )
    return public, secret


def load_public_key(path: str | Path) -> bytes:
    """The z85 public key of a ``.key`` (or ``.key_secret``) file."""
    return _load(Path(path))[0]


def _load(path: Path) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError:
        raise SoundwatchError(
            f"key file {path} does not exist; create a pair with: soundwatch keys generate DIR"
        ) from None
    except ValueError:
        raise SoundwatchError(
            f"{path} is not a CURVE key file (no public-key line); make one with "
            "soundwatch keys generate DIR"
        ) from None
    if len(public) != 40 or (secret is not None and len(secret) != 40):
        raise SoundwatchError(f"{path}: a CURVE key is 40 z85 characters; the file is damaged")
    return public, secret


def allowed_keys(directory: Path) -> set[bytes]:
    """The public keys of every ``*.key`` file in ``directory``."""
    keys = set()
    for path in sorted(directory.glob(f"*{PUBLIC_SUFFIX}")):
        try:
            keys.add(load_public_key(path))
        except SoundwatchError as error:  # allows nobody; the other files still count
            log.warning("ignoring an allowed key: %s", error)
    return keys

"""CURVE on soundwatch's sockets: keys, the allow-list, refusals logged, loopback warnings.

Real ZeroMQ sockets over loopback TCP: a CURVE publisher serves an allowed client and
refuses an unknown key, a client with the wrong server key and a plaintext client; each
refusal is logged on the server side, and a refused client receives nothing while an
allowed client beside it receives everything.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import zmq.auth
from click.testing import CliRunner

from soundwatch.cli import main
from soundwatch.client import CurveClient, Subscriber
from soundwatch.errors import SoundwatchError
from soundwatch.security import CurveServer, generate_keys, is_loopback_endpoint
from soundwatch.sinks.messages import Status
from soundwatch.sinks.publisher import Publisher, ZmqOutput

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 20.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")


@dataclass
class Keys:
    root: Path

    @property
    def allow(self) -> Path:
        return self.root / "allow"

    def server(self) -> CurveServer:
        return CurveServer(self.root / "server.key_secret", self.allow)

    def client(self, name: str, server: str = "server") -> CurveClient:
        secret = self.allow / f"{name}.key_secret"
        if not secret.exists():
            secret = self.root / f"{name}.key_secret"
        return CurveClient(secret, self.root / f"{server}.key")


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    found = Keys(tmp_path)
    generate_keys(tmp_path, "server")
    generate_keys(tmp_path, "impostor")  # a server key the clients were not given
    generate_keys(found.allow, "alice")  # allowed: her public key is in allow/
    generate_keys(tmp_path, "mallory")  # a valid pair, unknown to the server
    return found


def test_generate_writes_pyzmq_certificates_with_a_private_secret(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["keys", "generate", str(tmp_path / "k"), "--name", "hub"])
    assert result.exit_code == 0, result.output
    public, secret = tmp_path / "k" / "hub.key", tmp_path / "k" / "hub.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    pub_key, no_secret = zmq.auth.load_certificate(public)
    same_pub, secret_key = zmq.auth.load_certificate(secret)
    assert no_secret is None and secret_key is not None and len(secret_key) == 40
    assert pub_key == same_pub and len(pub_key) == 40
    again = CliRunner().invoke(main, ["keys", "generate", str(tmp_path / "k"), "--name", "hub"])
    assert again.exit_code == 1 and "exists already" in again.output


def test_a_secret_key_readable_by_others_is_refused_with_the_fix(keys: Keys) -> None:
    secret = keys.root / "server.key_secret"
    os.chmod(secret, 0o644)
    with pytest.raises(SoundwatchError, match=r"readable by other users \(mode 0644\).*chmod 600"):
        keys.server()
    os.chmod(secret, 0o640)
    with pytest.raises(SoundwatchError, match="chmod 600"):
        CurveClient(secret, keys.root / "server.key")
    os.chmod(secret, 0o600)
    keys.server()  # fixed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("missing.key_secret", "server.key"), "does not exist; create a pair"),
        (("server.key", "server.key"), "holds no secret key"),
        (("server.key_secret", "garbage.key"), "is not a CURVE key file"),
    ],
)
def test_bad_key_files_are_explained(keys: Keys, args: tuple[str, str], message: str) -> None:
    (keys.root / "garbage.key").write_text("not a certificate\n")
    os.chmod(keys.root / "server.key", 0o600)  # the public file, made private: still no secret
    with pytest.raises(SoundwatchError, match=message):
        CurveClient(keys.root / args[0], keys.root / args[1])


def test_curve_options_come_in_pairs() -> None:
    assert CurveClient.from_options(None, None) is None
    with pytest.raises(SoundwatchError, match="both --curve-secret"):
        CurveClient.from_options(Path("a.key_secret"), None)


@pytest.fixture
def server(keys: Keys) -> Iterator[tuple[ZmqOutput, Publisher]]:
    output = ZmqOutput(["tcp://127.0.0.1:0"], curve=keys.server())
    publisher = Publisher([output])
    yield output, publisher
    publisher.close()


#: Who connects, and how the server must log the refusal (None: allowed).
CASES = {
    "allowed client": (lambda k: k.client("alice"), None, None),
    "unknown client key": (lambda k: k.client("mallory"), "unknown_key", "unknown client key"),
    "wrong server key": (
        lambda k: k.client("alice", server="impostor"),
        "bad_handshake",
        "wrong server public key",
    ),
    # Whichever side sees the mismatch first: the server ("plaintext"), or the client,
    # which hangs up ("hung_up"); both are logged as a client without CURVE.
    "plaintext client": (lambda k: None, ("plaintext", "hung_up"), "without CURVE (plaintext)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_only_allowed_clients_receive_and_refusals_are_logged(
    case: str,
    keys: Keys,
    server: tuple[ZmqOutput, Publisher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    make_curve, kind, logged = CASES[case]
    output, publisher = server
    endpoint = output.endpoints[0]
    caplog.set_level(logging.WARNING, logger="soundwatch.security")
    control = Subscriber(endpoint, topics=["status."], curve=keys.client("alice"))
    tested = Subscriber(endpoint, topics=["status."], curve=make_curve(keys))
    try:
        # Wait until the control subscribed and the tested client was let in or refused.
        def settled() -> bool:
            output.wants(b"")  # reads the subscriptions
            joined = output.subscriptions >= (2 if kind is None else 1)
            kinds = (kind,) if isinstance(kind, str) else kind or ()
            return joined and (kind is None or any(output.guard.refused[k] for k in kinds))

        wait_until(settled, what=f"{case}: the handshake to settle")
        for seq in range(20):
            publisher.publish(Status(stream="porch", t_start=seq, t_end=seq))
        got = [control.receive(timeout=10) for _ in range(20)]
        assert all(isinstance(m, Status) for m in got), "the allowed control got everything"
        if kind is None:
            assert [tested.receive(timeout=10).seq for _ in range(20)] == list(range(20))
            assert not output.guard.refused
            assert not caplog.records
        else:
            # Everything already reached the control over the same socket: nothing is on
            # its way to the refused client, which has no connection at all.
            assert tested.receive(timeout=0.2) is None and tested.received == 0
            wait_until(
                lambda: any(logged in r.getMessage() for r in caplog.records),
                what=f"the server to log {logged!r}",
            )
            server_lines = [
                r.getMessage() for r in caplog.records if "publisher on" in r.getMessage()
            ]
            assert any(logged in line and endpoint in line for line in server_lines), server_lines
    finally:
        tested.close()
        control.close()


def test_a_refused_client_says_why(keys: Keys, server: tuple[ZmqOutput, Publisher]) -> None:
    output, _ = server
    unknown = Subscriber(output.endpoints[0], curve=keys.client("mallory"))
    wrong_server = Subscriber(output.endpoints[0], curve=keys.client("alice", server="impostor"))
    try:
        wait_until(lambda: unknown.refused.get("unknown_key"), what="the refusal of mallory")
        wait_until(lambda: wrong_server.refused.get("bad_handshake"), what="the bad handshake")
    finally:
        unknown.close()
        wrong_server.close()


def test_a_key_added_to_the_allow_list_is_served_without_a_restart(
    keys: Keys, server: tuple[ZmqOutput, Publisher]
) -> None:
    output, publisher = server
    generate_keys(keys.root / "later", "bob")
    bob = Subscriber(
        output.endpoints[0],
        curve=CurveClient(keys.root / "later" / "bob.key_secret", keys.root / "server.key"),
    )
    try:
        wait_until(lambda: output.guard.refused["unknown_key"], what="bob refused first")
        bob.close()
        (keys.root / "later" / "bob.key").rename(keys.allow / "bob.key")
        bob = Subscriber(
            output.endpoints[0],
            curve=CurveClient(keys.root / "later" / "bob.key_secret", keys.root / "server.key"),
        )

        def received() -> bool:
            publisher.publish(Status(stream="porch", t_start=0, t_end=0))
            return bob.receive(timeout=0.05) is not None

        wait_until(received, what="bob to receive once allowed")
    finally:
        bob.close()


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [
        ("tcp://127.0.0.1:5557", True),
        ("tcp://localhost:5557", True),
        ("tcp://[::1]:5557", True),
        ("ipc:///run/soundwatch/pub", True),
        ("inproc://x", True),
        ("tcp://*:5557", False),
        ("tcp://0.0.0.0:5557", False),
        ("tcp://192.168.1.20:5557", False),
        ("tcp://eth0:5557", False),
    ],
)
def test_loopback_endpoints(endpoint: str, loopback: bool) -> None:
    assert is_loopback_endpoint(endpoint) is loopback


def test_publishing_beyond_loopback_without_curve_warns(
    keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    ZmqOutput(["tcp://127.0.0.1:0"]).close()
    assert not caplog.records
    ZmqOutput(["tcp://0.0.0.0:0"]).close()
    assert any("without CURVE" in r.getMessage() for r in caplog.records)
    caplog.clear()
    ZmqOutput(["tcp://0.0.0.0:0"], curve=keys.server()).close()
    assert not [r for r in caplog.records if "without CURVE" in r.getMessage()]


def test_config_security_section_is_checked(keys: Keys) -> None:
    from soundwatch.config import parse_config

    config = parse_config(
        {
            "security": {
                "curve_secret": str(keys.root / "server.key_secret"),
                "curve_allow": str(keys.allow),
            }
        }
    )
    assert config.security.enabled

"""CURVE on a socket: the server side (ZAP allow-list, refusals logged) and the client side.

The server checks every connecting client against the public keys in a directory through
ZeroMQ's ZAP protocol (pyzmq's :class:`~zmq.auth.thread.ThreadAuthenticator`); the
directory is read on every connection, so adding or removing a ``.key`` file takes effect
without a restart (for new connections). A socket monitor reports the handshakes that fail
before ZAP is asked: a plaintext client, or one that encrypts to the wrong server key.
Refusals are logged (the first of each kind at once, then a count at most once a minute,
since a refused client retries every few hundred milliseconds) and counted in
:attr:`ServerGuard.refused`.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import Counter
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from soundwatch.errors import SoundwatchError
from soundwatch.security.keys import allowed_keys, load_public_key, load_secret_key

log = logging.getLogger(__name__)

ZAP_DOMAIN = "soundwatch"
LOG_EVERY_S = 60.0  # a repeated refusal of the same kind is summed up at most this often
KEY_REFUSAL_ECHO_S = 5.0  # a hang-up this soon after a refused key is that client leaving
HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)

#: Why a handshake failed, by ZMTP protocol error, as told to the operator.
_PROTOCOL_REASONS = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: (
        "plaintext",
        "a peer without CURVE (plaintext) tried to connect; give it --curve-secret and "
        "--curve-server, or remove CURVE from the other side",
    ),
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: (
        "bad_handshake",
        "a peer's CURVE handshake did not decrypt: it uses the wrong server public key "
        "(--curve-server must be the server's .key file)",
    ),
    zmq.PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE: (
        "bad_handshake",
        "a peer's CURVE key exchange failed: it uses the wrong server public key",
    ),
}


def is_loopback_endpoint(endpoint: str) -> bool:
    """Whether only this machine can reach ``endpoint``: ipc://, inproc:// or tcp:// on a
    loopback address (``tcp://*``, ``0.0.0.0`` or an interface name reach the network)."""
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint.removeprefix("tcp://").rpartition(":")[0]
    host = host.partition(";")[2] or host  # tcp://source;dest:port: the destination host
    host = host.removeprefix("[").removesuffix("]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RefusalLog:
    """Counts refusals by kind and logs them without flooding the log."""

    def __init__(self, where: str, verb: str = "refused a connection") -> None:
        self.where = where
        self.verb = verb
        self.counts: Counter[str] = Counter()
        self.last_key_refusal = float("-inf")  # monotonic time the allow-list refused a key
        self._logged: dict[str, tuple[float, int]] = {}  # kind -> (when, count then)
        self._lock = threading.Lock()

    def refused(self, kind: str, text: str) -> None:
        with self._lock:
            self.counts[kind] += 1
            now = time.monotonic()
            last = self._logged.get(kind)
            if last is not None and now - last[0] < LOG_EVERY_S:
                return
            since = self.counts[kind] - (last[1] if last else 0)
            self._logged[kind] = (now, self.counts[kind])
        more = f" ({since} times since the last report)" if last is not None else ""
        log.warning("%s: %s: %s%s", self.where, self.verb, text, more)


class _AllowList:
    """ZAP credentials provider: a client may connect when its public key is in ``directory``
    (or is one of the server's own in-process clients, ``local``)."""

    def __init__(self, directory: Path, refusals: RefusalLog, local: set[bytes]) -> None:
        self.directory = directory
        self.refusals = refusals
        self.local = local

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.local or key in allowed_keys(self.directory):
            return True
        self.refusals.last_key_refusal = time.monotonic()
        self.refusals.refused(
            "unknown_key",
            f"unknown client key {key.decode()} (not in {self.directory}; copy the client's "
            ".key file there to allow it)",
        )
        return False


class _HandshakeMonitor(threading.Thread):
    """Reads a socket's monitor events and reports failed handshakes."""

    def __init__(self, socket: zmq.Socket, refusals: RefusalLog, skip_auth: bool) -> None:
        super().__init__(name="curve-monitor", daemon=True)
        self.address = f"inproc://soundwatch-monitor-{id(socket):x}-{time.monotonic_ns()}"
        socket.monitor(self.address, HANDSHAKE_EVENTS)
        self.pair = socket.context.socket(zmq.PAIR)
        self.pair.connect(self.address)
        self.refusals = refusals
        self.skip_auth = skip_auth  # server side: the allow-list reports refused keys
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                if not self.pair.poll(200):
                    continue
                event = recv_monitor_message(self.pair)
                if event["event"] == zmq.EVENT_MONITOR_STOPPED:
                    return
                self._report(event["event"], event["value"], event["endpoint"])
        except zmq.ZMQError:  # the context is ending
            return
        finally:
            self.pair.close(linger=0)

    def _report(self, kind: int, value: int, endpoint: bytes) -> None:
        where = endpoint.decode(errors="replace")
        if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            if not self.skip_auth:
                self.refusals.refused(
                    "unknown_key",
                    f"{where} refused this client's key (status {value}); add this client's "
                    ".key file to the server's --curve-allow directory",
                )
            return
        if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value in _PROTOCOL_REASONS:
            name, text = _PROTOCOL_REASONS[value]
            self.refusals.refused(name, f"{text} ({where})")
            return
        if kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and self.skip_auth:
            # Server side: the peer hung up mid-handshake. After a key refused by the
            # allow-list that is the refused client leaving (already reported); otherwise the
            # client gave up on us first: a plaintext client that saw our CURVE greeting before
            # we saw its NULL one, or a port scan.
            if time.monotonic() - self.refusals.last_key_refusal < KEY_REFUSAL_ECHO_S:
                log.debug("a refused client hung up on %s (errno %d)", where, value)
                return
            self.refusals.refused(
                "hung_up",
                f"a peer hung up during the handshake on {where} (errno {value}): a client "
                "without CURVE (plaintext), or not a soundwatch client",
            )
            return
        if kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            self.refusals.refused(
                "bad_handshake",
                f"{where} closed the CURVE handshake: --curve-server is not that server's "
                "public key, or the server does not use CURVE",
            )
            return
        self.refusals.refused(
            "handshake", f"handshake failed on {where} (ZeroMQ event {kind}, value {value:#x})"
        )

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=2)


class ServerGuard:
    """CURVE working on one server socket: its authenticator and handshake monitor."""

    def __init__(
        self, auth: ThreadAuthenticator, monitor: _HandshakeMonitor, refusals: RefusalLog
    ) -> None:
        self._auth = auth
        self._monitor = monitor
        self.refusals = refusals

    @property
    def refused(self) -> Counter[str]:
        """Refused connections by kind: unknown_key, plaintext, bad_handshake, hung_up
        (a peer left mid-handshake: often a plaintext client) and handshake (other)."""
        return self.refusals.counts

    def close(self) -> None:
        """Stop reporting and authenticating (call after closing the socket)."""
        self._monitor.stop()
        self._auth.stop()


class CurveServer:
    """This server's key pair and the directory of the client keys it serves."""

    def __init__(self, secret_file: str | Path, allow_dir: str | Path) -> None:
        self.secret_file = Path(secret_file)
        self.public, self.secret = load_secret_key(self.secret_file)
        self.allow_dir = Path(allow_dir)
        if not self.allow_dir.is_dir():
            raise SoundwatchError(
                f"--curve-allow {self.allow_dir} is not a directory; make one holding the "
                "public .key file of every client that may subscribe"
            )
        if not allowed_keys(self.allow_dir):
            log.warning(
                "no client keys (*.key) in %s: no subscriber can connect until one is added",
                self.allow_dir,
            )
        self._local: set[bytes] = set()  # public keys of in-process clients (local_client)

    def local_client(self) -> CurveClient:
        """Keys for a client inside this process (the dashboard or MQTT bridge that
        ``soundwatch run`` starts, asking its control endpoint): a fresh pair, never written
        anywhere, allowed by this server for as long as it runs."""
        public, secret = zmq.curve_keypair()
        self._local.add(public)
        return CurveClient.from_keys(public, secret, self.public)

    def secure(self, socket: zmq.Socket, where: str) -> ServerGuard:
        """Make ``socket`` (not bound yet) a CURVE server that serves only allowed clients.

        The socket's context must be its own: ZAP is one handler per context.
        """
        refusals = RefusalLog(where)
        auth = ThreadAuthenticator(socket.context, log=logging.getLogger("soundwatch.zap"))
        auth.start()
        auth.configure_curve_callback(ZAP_DOMAIN, _AllowList(self.allow_dir, refusals, self._local))
        socket.zap_domain = ZAP_DOMAIN.encode()
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True
        monitor = _HandshakeMonitor(socket, refusals, skip_auth=True)
        monitor.start()
        return ServerGuard(auth, monitor, refusals)


class CurveClient:
    """A client's key pair and the public key of the server it trusts."""

    def __init__(self, secret_file: str | Path, server_key_file: str | Path) -> None:
        self.public, self.secret = load_secret_key(secret_file)
        self.server = load_public_key(server_key_file)

    @classmethod
    def from_keys(cls, public: bytes, secret: bytes, server: bytes) -> CurveClient:
        """From keys in memory (z85): this client's pair and the server's public key."""
        client = cls.__new__(cls)
        client.public, client.secret, client.server = public, secret, server
        return client

    @classmethod
    def from_options(
        cls, secret_file: str | Path | None, server_key_file: str | Path | None
    ) -> CurveClient | None:
        """From ``--curve-secret`` and ``--curve-server``: both, or neither (None)."""
        if secret_file is None and server_key_file is None:
            return None
        if secret_file is None or server_key_file is None:
            raise SoundwatchError(
                "CURVE needs both --curve-secret CLIENT.key_secret (this client's key) and "
                "--curve-server SERVER.key (the server's public key)"
            )
        return cls(secret_file, server_key_file)

    def secure(self, socket: zmq.Socket) -> None:
        """Make ``socket`` (not connected yet) a CURVE client of the trusted server."""
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_serverkey = self.server


def client_monitor(socket: zmq.Socket, where: str) -> tuple[_HandshakeMonitor, RefusalLog]:
    """Report a client socket's failed handshakes (refused key, wrong server key)."""
    refusals = RefusalLog(where, "cannot connect")
    monitor = _HandshakeMonitor(socket, refusals, skip_auth=False)
    monitor.start()
    return monitor, refusals

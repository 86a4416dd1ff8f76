"""The control endpoint: a ZeroMQ REP socket served by one thread.

Each request is a JSON object ``{"cmd": ..., ...}``; each reply ``{"ok": true, "result":
...}`` or ``{"ok": false, "error": "why"}`` (docs/control.md). The commands themselves are
:class:`~soundwatch.control.controls.Controls`'; the socket is used by its thread only.
"""

from __future__ import annotations

import json
import logging
import threading

import zmq

from soundwatch.control.controls import Controls
from soundwatch.errors import SoundwatchError
from soundwatch.security.curve import (
    CurveClient,
    CurveServer,
    ServerGuard,
    is_loopback_endpoint,
)

log = logging.getLogger(__name__)

#: Largest request accepted, bytes (a command is a few hundred).
MAX_REQUEST_BYTES = 64 * 1024


class ControlServer:
    """Serve ``controls`` on ``endpoint`` until :meth:`close`."""

    def __init__(self, endpoint: str, controls: Controls, curve: CurveServer | None = None) -> None:
        """``curve``: serve only clients whose public keys it allows (``security:``)."""
        self.controls = controls
        self.curve = curve
        # ZAP is one handler per context: a CURVE server gets a context of its own.
        self._context = zmq.Context() if curve is not None else None
        self.socket = (self._context or zmq.Context.instance()).socket(zmq.REP)
        self.guard: ServerGuard | None = None
        if curve is not None:
            self.guard = curve.secure(self.socket, f"control {endpoint}")
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError as error:
            self.socket.close()
            self._release()
            raise SoundwatchError(
                f"cannot listen for control on {endpoint}: {error}; choose another "
                "control.endpoint (--control)"
            ) from None
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        if curve is None and not is_loopback_endpoint(endpoint):
            log.warning(
                "the control endpoint %s is reachable from other machines and has no "
                "authentication: anyone there can change thresholds and pause streams",
                endpoint,
            )
        self.requests = 0
        self.rejected = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)

    def local_client(self) -> CurveClient | None:
        """Keys for a client in this process (the attached dashboard and MQTT bridge), or
        None when this endpoint does not use CURVE."""
        return self.curve.local_client() if self.curve is not None else None

    def start(self) -> ControlServer:
        self._thread.start()
        return self

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            payload = self.socket.recv()
            try:
                request = json.loads(payload)
                if not isinstance(request, dict):
                    raise ValueError("not an object")
            except ValueError:
                reply = {"ok": False, "error": 'a request is a JSON object {"cmd": ...}'}
            else:
                reply = self.controls.handle(request, origin=_origin(request))
            self.requests += 1
            self.rejected += not reply["ok"]
            self.socket.send_json(reply)
        self.socket.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
            if self._thread.is_alive():  # its socket is still open: the context cannot end
                log.warning("the control thread did not stop within 5 s")
                return
        else:
            self.socket.close()
        self._release()

    def _release(self) -> None:
        """Stop authenticating and drop the CURVE context (after the socket closed)."""
        if self.guard is not None:
            self.guard.close()
            self.guard = None
        if self._context is not None:
            self._context.term()
            self._context = None


def _origin(request: dict) -> str:
    """Who asked, for the log and the history: ``control socket``, or e.g. ``mqtt via
    control socket`` when the client names itself (``origin`` in the request)."""
    named = request.get("origin")
    if isinstance(named, str) and named and len(named) <= 40:
        return f"{named} via control socket"
    return "control socket"

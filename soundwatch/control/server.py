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

log = logging.getLogger(__name__)

#: Largest request accepted, bytes (a command is a few hundred).
MAX_REQUEST_BYTES = 64 * 1024


class ControlServer:
    """Serve ``controls`` on ``endpoint`` until :meth:`close`."""

    def __init__(self, endpoint: str, controls: Controls) -> None:
        self.controls = controls
        self.socket = zmq.Context.instance().socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError as error:
            self.socket.close()
            raise SoundwatchError(
                f"cannot listen for control on {endpoint}: {error}; choose another "
                "control.endpoint (--control)"
            ) from None
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        if endpoint.startswith("tcp://") and not endpoint.startswith(
            ("tcp://127.", "tcp://localhost", "tcp://[::1]")
        ):
            log.warning(
                "the control endpoint %s is reachable from other machines and has no "
                "authentication: anyone there can change thresholds and pause streams",
                endpoint,
            )
        self.requests = 0
        self.rejected = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)

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
        else:
            self.socket.close()


def _origin(request: dict) -> str:
    """Who asked, for the log and the history: ``control socket``, or e.g. ``mqtt via
    control socket`` when the client names itself (``origin`` in the request)."""
    named = request.get("origin")
    if isinstance(named, str) and named and len(named) <= 40:
        return f"{named} via control socket"
    return "control socket"

"""Ask a running soundwatch's control endpoint (torch-free: ``soundwatch ctl`` uses it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import zmq

from soundwatch.endpoints import check_endpoint
from soundwatch.errors import SoundwatchError

if TYPE_CHECKING:
    from soundwatch.security.curve import CurveClient

#: Seconds to wait for an answer.
TIMEOUT_S = 5.0


class ControlRejected(SoundwatchError):
    """The endpoint answered and refused the request (the text says why)."""


def request(
    endpoint: str,
    cmd: str,
    timeout: float = TIMEOUT_S,
    curve: CurveClient | None = None,
    **args: Any,
) -> Any:
    """Send one command; return its result, or raise :class:`ControlRejected` (refused) or
    :class:`SoundwatchError` (no answer). ``curve``: this client's keys and the server's
    public key, when the endpoint is CURVE-secured."""
    try:
        check_endpoint(endpoint, connect=True)
    except ValueError as error:
        where = "the address soundwatch run --control listens on"
        raise SoundwatchError(f"{error} ({where})") from None
    socket = zmq.Context.instance().socket(zmq.REQ)
    if curve is not None:
        curve.secure(socket)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    socket.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
    try:
        socket.connect(endpoint)
        socket.send_json({"cmd": cmd, **args})
        reply = socket.recv_json()
    except zmq.Again:
        raise SoundwatchError(
            f"no answer from {endpoint} within {timeout:g} s; is soundwatch run --control "
            f"{endpoint} running (and, when it uses CURVE, are --curve-secret/--curve-server "
            "right)?"
        ) from None
    except zmq.ZMQError as error:
        raise SoundwatchError(f"cannot reach the control endpoint {endpoint}: {error}") from None
    finally:
        socket.close()
    if not isinstance(reply, dict) or "ok" not in reply:
        raise SoundwatchError(f"{endpoint} did not answer as a soundwatch control endpoint")
    if not reply["ok"]:
        raise ControlRejected(str(reply.get("error", "rejected")))
    return reply.get("result")

"""ZeroMQ endpoint syntax: one check for every endpoint a user gives.

``publish.endpoints``, ``control.endpoint``, ``serve.listen``, ``edge.to`` and ``soundwatch
ctl --endpoint`` all go through :func:`check_endpoint`, so a typo is one message naming the
problem and the fix before anything binds or connects. ZeroMQ itself would answer a bad
address with a bare ``Invalid argument``, or accept it silently (``tcp://:5557`` connects to
nothing; port 70000 wraps around to 4464). Standard library only: subscribers and edges
import it.
"""

from __future__ import annotations

#: Every transport soundwatch binds or connects (``inproc`` only within one process).
TRANSPORTS = ("tcp", "ipc", "inproc")

_FORMS = {"tcp": "tcp://HOST:PORT", "ipc": "ipc://PATH", "inproc": "inproc://NAME"}


def endpoint_problem(
    endpoint: str, transports: tuple[str, ...] = TRANSPORTS, *, connect: bool = False
) -> str | None:
    """What is wrong with ``endpoint``, or None when ZeroMQ can use it.

    ``connect``: the endpoint is connected to (an edge's ``--to``, ``soundwatch ctl``), so
    the wildcards that only listening understands (host ``*``, port ``0`` or ``*``) are
    refused; otherwise it is bound."""
    if any(c.isspace() for c in endpoint):
        return "it contains whitespace"
    transport, sep, address = endpoint.partition("://")
    if not sep:
        return "it names no transport"
    if transport not in transports:
        return f"the transport {transport}:// is not supported here"
    if transport == "ipc":
        return None if address else "it has no path"
    if transport == "inproc":
        return None if address else "it has no name"
    return _tcp_problem(address.rpartition(";")[2], connect)  # tcp://[SOURCE;]HOST:PORT


def _tcp_problem(address: str, connect: bool) -> str | None:
    host, sep, port = address.rpartition(":")
    if not sep or "]" in port:  # tcp://HOST or tcp://[::1]
        return "it has no port"
    if not host or host == "[]":
        return "it has no host (127.0.0.1: this machine only; *: every interface)"
    if connect and host == "*":
        return "host * only works when listening; give the server's address"
    if port == "*" and not connect:
        return None
    lowest = 1 if connect else 0
    if not (port.isascii() and port.isdigit()) or not lowest <= int(port) <= 65535:
        wildcard = "" if connect else " (0 or * picks a free port)"
        return f"the port {port!r} is not a number from {lowest} to 65535{wildcard}"
    return None


def endpoint_forms(transports: tuple[str, ...] = TRANSPORTS) -> str:
    """How the accepted endpoints look (``tcp://HOST:PORT or ipc://PATH``): inproc is left
    out when another transport is accepted, as only code within one process uses it."""
    shown = [t for t in transports if t != "inproc"] or list(transports)
    return " or ".join(_FORMS[t] for t in shown)


def check_endpoint(
    endpoint: str, transports: tuple[str, ...] = TRANSPORTS, *, connect: bool = False
) -> str:
    """``endpoint`` unchanged, or ValueError naming its problem and the fix (a ValueError so
    that pydantic validators report it under the config key; callers outside the
    configuration turn it into a :class:`~soundwatch.errors.SoundwatchError`)."""
    problem = endpoint_problem(endpoint, transports, connect=connect)
    if problem is not None:
        raise ValueError(
            f"{endpoint!r} is not a ZeroMQ endpoint: {problem}; use {endpoint_forms(transports)}"
        )
    return endpoint

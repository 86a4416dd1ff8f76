"""The one ZeroMQ endpoint check (``soundwatch.endpoints``), table-driven: what it accepts
ZeroMQ really binds or connects; what it refuses gets a message naming the problem and
the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq

from soundwatch.endpoints import check_endpoint, endpoint_problem
from soundwatch.errors import SoundwatchError

EDGE = ("tcp", "ipc")

# (endpoint, transports, connect): each one ZeroMQ accepts for that use
GOOD = [
    ("tcp://127.0.0.1:0", None, False),  # 0: a free port
    ("tcp://127.0.0.1:*", None, False),
    ("tcp://*:0", None, False),
    ("tcp://localhost:0", EDGE, False),
    ("ipc://{tmp}/pub", None, False),
    ("inproc://soundwatch-test", None, False),
    ("tcp://127.0.0.1:5557", EDGE, True),
    ("tcp://[::1]:5557", None, True),
    ("tcp://127.0.0.1;127.0.0.1:5557", EDGE, True),  # tcp://SOURCE;HOST:PORT
    ("ipc://{tmp}/server", EDGE, True),
]

# (endpoint, transports, connect, what the message must name)
BAD = [
    ("localhost:5557", None, False, "it names no transport"),
    ("127.0.0.1", None, False, "it names no transport"),
    ("udp://127.0.0.1:5557", None, False, "the transport udp:// is not supported"),
    ("http://x", EDGE, True, "the transport http:// is not supported"),
    ("inproc://x", EDGE, True, "the transport inproc:// is not supported"),
    ("tcp://localhost", None, False, "it has no port"),
    ("tcp://[::1]", None, True, "it has no port"),
    ("tcp://:5557", None, True, "it has no host (127.0.0.1: this machine only; *: every"),
    ("tcp://*:5557", EDGE, True, "host * only works when listening"),
    ("tcp://127.0.0.1:abc", None, False, "the port 'abc' is not a number from 0 to 65535"),
    ("tcp://127.0.0.1:70000", None, False, "the port '70000' is not a number from 0 to"),
    ("tcp://127.0.0.1:", None, False, "the port '' is not a number"),
    ("tcp://127.0.0.1:5557/x", None, False, "the port '5557/x'"),
    ("tcp://127.0.0.1:0", EDGE, True, "the port '0' is not a number from 1 to 65535"),
    ("tcp://127.0.0.1:*", EDGE, True, "the port '*' is not a number from 1 to 65535"),
    ("tcp://127.0.0.1: 5557", None, False, "it contains whitespace"),
    ("ipc://", None, False, "it has no path"),
    ("inproc://", None, False, "it has no name"),
]


@pytest.mark.parametrize(("endpoint", "transports", "connect"), GOOD)
def test_accepted_endpoints_are_ones_zeromq_uses(
    endpoint: str, transports: tuple[str, ...] | None, connect: bool, tmp_path: Path
) -> None:
    endpoint = endpoint.format(tmp=tmp_path)
    kinds = {} if transports is None else {"transports": transports}
    assert endpoint_problem(endpoint, **kinds, connect=connect) is None
    assert check_endpoint(endpoint, **kinds, connect=connect) == endpoint
    socket = zmq.Context.instance().socket(zmq.PUB)
    try:
        (socket.connect if connect else socket.bind)(endpoint)  # raises if ZeroMQ refuses
    finally:
        socket.close(linger=0)


@pytest.mark.parametrize(("endpoint", "transports", "connect", "problem"), BAD)
def test_refused_endpoints_name_the_problem_and_the_fix(
    endpoint: str, transports: tuple[str, ...] | None, connect: bool, problem: str
) -> None:
    kinds = {} if transports is None else {"transports": transports}
    with pytest.raises(ValueError) as caught:
        check_endpoint(endpoint, **kinds, connect=connect)
    message = str(caught.value)
    assert message.startswith(f"{endpoint!r} is not a ZeroMQ endpoint: ")
    assert problem in message
    assert message.endswith("; use tcp://HOST:PORT or ipc://PATH")  # inproc is in-process only


def test_ctl_refuses_a_bad_endpoint_before_asking() -> None:
    from soundwatch.control.client import request

    with pytest.raises(SoundwatchError, match=r"'tcp://localhost' .*no port.*--control"):
        request("tcp://localhost", "streams", timeout=0.1)

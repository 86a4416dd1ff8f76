"""The ``dashboard:`` configuration section and the ``[HOST:]PORT`` flag syntax."""

from __future__ import annotations

from pydantic import Field

from soundwatch.dashboard import DEFAULT_HOST, DEFAULT_PORT
from soundwatch.errors import SoundwatchError
from soundwatch.validation import StrictModel


class DashboardConfig(StrictModel):
    """Serve the live dashboard from the pipeline process (``soundwatch run --dashboard``).

    Binds the loopback address unless told otherwise: the page shows what the microphones
    hear. ``port: 0`` picks a free port (the URL is printed).
    """

    enabled: bool = False
    host: str = Field(DEFAULT_HOST, min_length=1)
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)


def parse_listen_address(text: str, default_host: str = DEFAULT_HOST) -> tuple[str, int]:
    """``"8080"``, ``"0.0.0.0:8080"`` or ``"[::1]:8080"`` -> ``(host, port)``."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep:
        host = default_host
    host = host.removeprefix("[").removesuffix("]") or default_host
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise SoundwatchError(
            f"bad dashboard address {text!r}: expected [HOST:]PORT with a port from 0 to "
            "65535, e.g. 8080 or 127.0.0.1:8080"
        )
    return host, port

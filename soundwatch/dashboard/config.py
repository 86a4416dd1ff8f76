"""The ``dashboard:`` configuration section and the ``[HOST:]PORT`` flag syntax."""

from __future__ import annotations

import ipaddress

from pydantic import Field, model_validator

from soundwatch.dashboard import DEFAULT_HOST, DEFAULT_PORT
from soundwatch.errors import SoundwatchError
from soundwatch.validation import StrictModel

TOKEN_MIN_LENGTH = 8
TOKEN_HINT = (
    "give it a token with --token (or dashboard.token, or SOUNDWATCH_DASHBOARD_TOKEN), e.g. "
    "from: python -c 'import secrets; print(secrets.token_urlsafe())'"
)


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address (only this machine can connect)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def check_token_needed(host: str, token: str | None) -> None:
    """A page reachable from other machines shows what the microphones hear: it needs a
    token. ValueError naming the fix otherwise."""
    if token is None and not is_loopback_host(host):
        raise ValueError(
            f"the dashboard on {host} is reachable from other machines and shows what the "
            f"microphones hear: {TOKEN_HINT}; or serve it on 127.0.0.1"
        )
    if token is not None and len(token) < TOKEN_MIN_LENGTH:
        raise ValueError(f"the dashboard token is shorter than {TOKEN_MIN_LENGTH} characters")


class DashboardConfig(StrictModel):
    """Serve the live dashboard from the pipeline process (``soundwatch run --dashboard``).

    Binds the loopback address unless told otherwise: the page shows what the microphones
    hear. ``port: 0`` picks a free port (the URL is printed).
    """

    enabled: bool = False
    host: str = Field(DEFAULT_HOST, min_length=1)
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    token: str | None = Field(
        default=None, min_length=TOKEN_MIN_LENGTH, description="required beyond loopback"
    )

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> DashboardConfig:
        if self.enabled:
            check_token_needed(self.host, self.token)
        return self


def parse_listen_address(
    text: str, default_host: str = DEFAULT_HOST, what: str = "dashboard"
) -> tuple[str, int]:
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
            f"bad {what} address {text!r}: expected [HOST:]PORT with a port from 0 to "
            "65535, e.g. 8080 or 127.0.0.1:8080"
        )
    return host, port

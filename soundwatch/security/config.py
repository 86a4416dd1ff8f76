"""The ``security:`` configuration section: CURVE on the publisher's endpoints."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from soundwatch.validation import StrictModel


class SecurityConfig(StrictModel):
    """CURVE encryption and client authentication for ``publish.endpoints``.

    Both keys or neither: ``curve_secret`` is this server's ``.key_secret`` file (mode 0600),
    ``curve_allow`` the directory holding the public ``.key`` file of every client allowed
    to subscribe. Make keys with ``soundwatch keys generate DIR --name NAME``.
    """

    curve_secret: Path | None = Field(default=None, description="server .key_secret file")
    curve_allow: Path | None = Field(default=None, description="directory of client .key files")

    @model_validator(mode="after")
    def _both_or_neither(self) -> SecurityConfig:
        if (self.curve_secret is None) != (self.curve_allow is None):
            raise ValueError(
                "curve_secret and curve_allow go together: the server's secret key file and "
                "the directory of the client public keys it serves"
            )
        if self.curve_secret is not None and not self.curve_secret.is_file():
            raise ValueError(
                f"curve_secret: no such file {str(self.curve_secret)!r}; make a key pair with "
                "soundwatch keys generate DIR --name server"
            )
        if self.curve_allow is not None and not self.curve_allow.is_dir():
            raise ValueError(
                f"curve_allow: no such directory {str(self.curve_allow)!r}; make one holding "
                "the clients' public .key files"
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.curve_secret is not None

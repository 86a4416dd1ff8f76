"""Runtime control: change group thresholds, enable or disable groups, pause streams and
reload the config while soundwatch runs (docs/control.md).

``ControlConfig`` is the ``control`` config section; ``Controls`` (controls.py) does the
changes for any caller; ``ControlServer`` (server.py) serves them on a ZeroMQ REP socket;
``request`` (client.py) and ``soundwatch ctl`` (command.py) ask it.
"""

from soundwatch.control.config import DEFAULT_ENDPOINT, ControlConfig

__all__ = ["DEFAULT_ENDPOINT", "ControlConfig"]

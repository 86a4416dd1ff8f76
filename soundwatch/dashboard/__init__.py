"""A live web dashboard: subscribes to a running pipeline and serves a local page.

Subscriber-side only (no torch). ``soundwatch.dashboard.server.DashboardServer`` relays
``tags``, ``status``, ``events`` and ``mel`` messages to browsers over a WebSocket;
``soundwatch.dashboard.config.DashboardConfig`` is the ``dashboard:`` config section.
Nothing heavy is imported here, so the CLI stays quick to start.
"""

DEFAULT_HOST = "127.0.0.1"  # loopback: the page shows what the microphones hear
DEFAULT_PORT = 8080

"""Who may listen: CURVE keys and authentication for soundwatch's ZeroMQ sockets.

Depends only on pyzmq and :mod:`soundwatch.errors`, so the publisher and every subscriber
(client, dashboard, MQTT bridge, health check) can use it without the pipeline.
"""

from soundwatch.security.curve import CurveClient, CurveServer, is_loopback_endpoint
from soundwatch.security.keys import generate_keys, load_public_key, load_secret_key

__all__ = [
    "CurveClient",
    "CurveServer",
    "generate_keys",
    "is_loopback_endpoint",
    "load_public_key",
    "load_secret_key",
]

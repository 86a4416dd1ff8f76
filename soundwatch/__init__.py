"""soundwatch: a streaming, real-time sound event pipeline.

Data flows one way: capture (``stream``) -> log-mel frontend (``dsp``) ->
AudioSet taggers (``models``) -> smoothing, events and publishers (``sinks``).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("soundwatch")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]

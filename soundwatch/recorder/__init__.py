"""What happened: event clips cut from a per-stream audio ring, a searchable SQLite
history, privacy (no clip when speech is heard) and retention (docs/history.md).

``RecorderConfig`` is the ``recorder`` config section; ``Recorder`` plugs into a run
(audio tap, event publish wrapper, result handler); ``History`` reads and writes the
database; ``soundwatch events`` (:mod:`soundwatch.recorder.command`) lists it.
"""

from soundwatch.recorder.config import RecorderConfig, RetentionConfig
from soundwatch.recorder.history import History

__all__ = ["History", "RecorderConfig", "RetentionConfig"]

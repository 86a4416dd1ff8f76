"""Custom sounds: few-shot heads on the backbone's window embeddings.

``fileformat`` (the head file), ``embeddings`` (windows of recordings, embedded as the
pipeline does), ``augment`` (room-like augmentation), ``learn`` (fitting and calibration,
needs torch) and ``live`` (applying heads in a run: tags, events, hot loading; numpy only).
"""

from soundwatch.heads.fileformat import HEAD_SUFFIX, Backbone, Head, load_head

__all__ = ["HEAD_SUFFIX", "Backbone", "Head", "load_head"]

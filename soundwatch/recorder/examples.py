"""The last seconds of each live stream, for ``soundwatch record`` (custom-sound examples).

With the recorder on, its own audio rings serve (``max_clip + ring_slack`` seconds); with
only the control endpoint on, :class:`LiveAudio` keeps rings of its own, fed by the
pipeline's audio tap, ``recorder.example_seconds`` long (bounded: 128 kB per second per
stream). Nothing is captured twice and nothing is written here: the control command hands
the samples to the client, which writes the file (docs/control.md).
"""

from __future__ import annotations

import threading

from soundwatch.errors import SoundwatchError
from soundwatch.recorder.ring import AudioRing, Cut
from soundwatch.stream import AudioBlock
from soundwatch.stream.resample import TARGET_RATE


class LiveAudio:
    """Per-stream audio rings ``seconds`` long; ``rings`` shares a recorder's instead."""

    def __init__(self, seconds: float, rings: dict[str, AudioRing] | None = None) -> None:
        self.seconds = seconds
        self.rings = rings if rings is not None else {}
        self._lock = threading.Lock()

    def on_audio(self, stream: str, block: AudioBlock) -> None:
        """The pipeline's audio tap (only when these rings are this object's own)."""
        ring = self.rings.get(stream)
        if ring is None:
            with self._lock:
                ring = self.rings.setdefault(stream, AudioRing(self.seconds))
        ring.write(block)

    def last(self, stream: str, seconds: float) -> Cut:
        """The newest ``seconds`` of ``stream``'s audio, exactly that long, or a
        :class:`SoundwatchError` saying why not (too long for the ring, not yet heard)."""
        if not seconds > 0:
            raise SoundwatchError(f"record needs seconds > 0, not {seconds!r}")
        if seconds > self.seconds:
            raise SoundwatchError(
                f"at most {self.seconds:g} s can be recorded: the audio ring holds that much "
                "(recorder.example_seconds, or recorder.max_clip + ring_slack with the "
                "recorder on)"
            )
        ring = self.rings.get(stream)
        cut = ring.last(seconds) if ring is not None else None
        want = round(seconds * TARGET_RATE)
        held = len(cut.samples) if cut is not None else 0
        if cut is None or held < want:
            raise SoundwatchError(
                f"stream {stream!r} holds only {held / TARGET_RATE:.1f} s of audio since it "
                f"started (or last lost audio); wait {(want - held) / TARGET_RATE:.1f} s more "
                "or ask for fewer seconds"
            )
        return cut

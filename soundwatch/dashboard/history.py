"""The dashboard's history routes: the recorder's events and their clips, read from the one
record directory the dashboard was given (``soundwatch dashboard --record DIR``).

Read-only, and torch-free: the history is opened per request (SQLite in WAL mode, so a
running recorder keeps writing), and a clip is served only when the history names it and
its file lies inside ``DIR/clips``; nothing else on the disk can be fetched.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from soundwatch.errors import SoundwatchError
from soundwatch.recorder.history import CLIPS_DIR, History

log = logging.getLogger(__name__)

MEDIA_TYPES = {".flac": "audio/flac", ".wav": "audio/wav", ".ogg": "audio/ogg"}


def clip_path(record_dir: Path, clip: str | None) -> Path | None:
    """The clip's file when it exists inside ``record_dir/clips``, else None."""
    if clip is None:
        return None
    root = (record_dir / CLIPS_DIR).resolve()
    path = Path(clip).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


class HistoryRoutes:
    """``/clips/{id}``: one event's clip (404 saying why there is none)."""

    def __init__(self, record_dir: Path) -> None:
        self.dir = Path(record_dir).resolve()

    def routes(self) -> list[Route]:
        return [Route("/clips/{record_id:int}", self.clip)]

    def row(self, record_id: int) -> dict[str, Any] | None:
        try:
            history = History(self.dir, create=False)
        except SoundwatchError:
            return None
        try:
            return history.get(record_id)
        finally:
            history.close()

    def clip(self, request: Request) -> Response:
        record_id = request.path_params["record_id"]
        row = self.row(record_id)
        if row is None:
            return JSONResponse({"error": f"no event {record_id} in the history"}, 404)
        path = clip_path(self.dir, row["clip"])
        if path is None:
            reason = row.get("clip_reason") or "the clip file is missing"
            return JSONResponse({"error": f"no clip for event {record_id}: {reason}"}, 404)
        media = MEDIA_TYPES.get(path.suffix, "application/octet-stream")
        return FileResponse(path, media_type=media, headers={"Cache-Control": "no-cache"})

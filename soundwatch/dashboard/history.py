"""The dashboard's history routes: the recorder's events, their clips and the clips'
spectrograms, read from the one record directory the dashboard was given (``soundwatch
dashboard --record DIR``); and the event groups' settings through a control endpoint
(``--control ENDPOINT``), changed as ``soundwatch ctl`` changes them.

Torch-free: the history is opened per request (SQLite in WAL mode, so a running recorder
keeps writing), and a clip is served only when the history names it and its file lies
inside ``DIR/clips``; nothing else on the disk can be fetched.

- ``GET /api/history?label=&stream=&since=&until=&limit=``: events (times: Unix seconds
  or an age such as ``2h``), newest last, each with ``clip_url`` or ``clip_reason``;
- ``GET /clips/{id}``: the clip; ``GET /api/clips/{id}/mel``: its log-mel, computed on
  request, as bytes (0..255 over the ``mel.`` topic's range) row by row;
- ``GET /api/groups``, ``POST /api/groups/{group}`` (JSON ``{"threshold_on": 0.3}``...):
  through the control endpoint; a refusal is a 400 with the endpoint's reason.

A dashboard without a record directory (or control endpoint) answers those routes with
``{"available": false, "reason": ...}``: the page then leaves the view out, no error.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from soundwatch.control.client import ControlRejected, request
from soundwatch.errors import SoundwatchError
from soundwatch.recorder.command import parse_when
from soundwatch.recorder.history import CLIPS_DIR, History
from soundwatch.security.curve import CurveClient
from soundwatch.sinks.mel import mel_bytes
from soundwatch.stream.resample import TARGET_RATE

log = logging.getLogger(__name__)

MEDIA_TYPES = {".flac": "audio/flac", ".wav": "audio/wav", ".ogg": "audio/ogg"}
MAX_ROWS = 500  # events per history request
MAX_MEL_FRAMES = 1200  # columns of a clip's spectrogram (longer clips are pooled)


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
    """The routes above for ``record_dir`` and, when given, the control endpoint."""

    def __init__(
        self,
        record_dir: Path | None,
        control: str | None = None,
        curve: CurveClient | None = None,
    ) -> None:
        self.dir = Path(record_dir).resolve() if record_dir is not None else None
        self.control = control
        self.curve = curve  # keys for a CURVE control endpoint

    def routes(self) -> list[Route]:
        return [
            Route("/api/history", self.history),
            Route("/clips/{record_id:int}", self.clip),
            Route("/api/clips/{record_id:int}/mel", self.mel),
            Route("/api/groups", self.groups),
            Route("/api/groups/{group}", self.set_group, methods=["POST"]),
        ]

    # -- the history -----------------------------------------------------------------------
    def _open(self) -> History | None:
        if self.dir is None:
            return None
        try:
            return History(self.dir, create=False)
        except SoundwatchError:
            return None

    def row(self, record_id: int) -> dict[str, Any] | None:
        history = self._open()
        if history is None:
            return None
        try:
            return history.get(record_id)
        finally:
            history.close()

    def history(self, request: Request) -> Response:
        if self.dir is None:
            # Not an error: this dashboard has no history to show (the page hides the view).
            return JSONResponse({"available": False, "reason": "start with --record DIR"})
        params = request.query_params
        try:
            since, until = (_when(params[k]) if params.get(k) else None for k in ("since", "until"))
            limit = _limit(params.get("limit"))
        except (SoundwatchError, ValueError) as error:
            return JSONResponse({"error": str(error)}, 400)
        history = self._open()
        if history is None:
            return JSONResponse({"events": [], "labels": [], "streams": []})
        try:
            rows = history.query(
                since, until, params.get("label") or None, params.get("stream") or None, limit
            )
            labels = [r[0] for r in history.db.execute("SELECT DISTINCT label FROM events")]
            streams = [r[0] for r in history.db.execute("SELECT DISTINCT stream FROM events")]
        finally:
            history.close()
        events = []
        for row in rows:
            has_clip = clip_path(self.dir, row.pop("clip")) is not None
            row["clip_url"] = f"clips/{row['id']}" if has_clip else None
            events.append(row)
        return JSONResponse(
            {"events": events, "labels": sorted(labels), "streams": sorted(streams)}
        )

    def _clip_file(self, record_id: int) -> tuple[Path | None, Response | None]:
        row = self.row(record_id)
        if row is None:
            return None, JSONResponse({"error": f"no event {record_id} in the history"}, 404)
        path = clip_path(self.dir, row["clip"]) if self.dir is not None else None
        if path is None:
            reason = row.get("clip_reason") or "the clip file is missing"
            return None, JSONResponse({"error": f"no clip for event {record_id}: {reason}"}, 404)
        return path, None

    def clip(self, request: Request) -> Response:
        path, refused = self._clip_file(request.path_params["record_id"])
        if path is None:
            return refused  # type: ignore[return-value]
        media = MEDIA_TYPES.get(path.suffix, "application/octet-stream")
        return FileResponse(path, media_type=media, headers={"Cache-Control": "no-cache"})

    def mel(self, request: Request) -> Response:
        path, refused = self._clip_file(request.path_params["record_id"])
        if path is None:
            return refused  # type: ignore[return-value]
        try:
            return JSONResponse(clip_mel(path))
        except (OSError, RuntimeError, SoundwatchError) as error:
            return JSONResponse({"error": f"cannot read the clip: {error}"}, 500)

    # -- the groups, through the control endpoint ------------------------------------------
    async def groups(self, request: Request) -> Response:
        return await self._ask("groups")

    async def set_group(self, request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0] != "application/json":
            return JSONResponse({"error": "send the values as application/json"}, 415)
        try:
            values = await request.json()
        except ValueError:
            values = None
        if not isinstance(values, dict):
            return JSONResponse({"error": 'send a JSON object, e.g. {"threshold_on": 0.3}'}, 400)
        return await self._ask("set", group=request.path_params["group"], values=values)

    async def _ask(self, cmd: str, **args: Any) -> Response:
        if self.control is None:
            return JSONResponse({"available": False, "reason": "start with --control"})
        try:
            result = await run_in_threadpool(
                request, self.control, cmd, curve=self.curve, origin="dashboard", **args
            )
        except ControlRejected as error:
            log.info("dashboard: %s refused: %s", cmd, error)
            return JSONResponse({"ok": False, "error": str(error)}, 400)
        except SoundwatchError as error:
            return JSONResponse({"ok": False, "error": str(error)}, 502)
        return JSONResponse({"ok": True, "result": result})


def _limit(value: str | None) -> int:
    """The rows asked for, at most ``MAX_ROWS`` (SQLite would read ``LIMIT -1`` as no limit
    at all, so below 1 is refused)."""
    if not value:
        return MAX_ROWS
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_ROWS}, got {value!r}")
    return min(limit, MAX_ROWS)


def _when(text: str) -> float:
    """Unix seconds (what the page sends), else an age or ISO time as ``--since`` takes."""
    try:
        return float(text)
    except ValueError:
        return parse_when(text)


def clip_mel(path: Path) -> dict[str, Any]:
    """A clip's log-mel as the page draws it: ``rows`` (mel bin, low first) of base64
    bytes, ``frames`` columns over ``seconds``."""
    import soundfile

    from soundwatch.dsp import logmel

    wave, rate = soundfile.read(path, dtype="float32", always_2d=True)
    if rate != TARGET_RATE:  # the recorder writes clips at the pipeline's rate
        raise SoundwatchError(f"{path.name} is at {rate} Hz, not the recorder's {TARGET_RATE} Hz")
    mono = wave.mean(axis=1)
    frames = logmel(mono) if len(mono) >= 2 else np.zeros((128, 1), np.float32)
    pool = -(-frames.shape[1] // MAX_MEL_FRAMES)
    if pool > 1:  # longer clips: the loudest of each run of columns
        cut = frames.shape[1] // pool * pool
        frames = frames[:, :cut].reshape(frames.shape[0], -1, pool).max(axis=2)
    data = np.ascontiguousarray(mel_bytes(frames))
    return {
        "bins": int(data.shape[0]),
        "frames": int(data.shape[1]),
        "seconds": len(mono) / rate,
        "data": base64.b64encode(data.tobytes()).decode(),
    }

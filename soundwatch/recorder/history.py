"""The event history: one SQLite database (WAL) in the record directory.

One writer (the recorder's writer thread) inserts an event's row when it starts, completes
it when it ends and links its clip once written; any number of readers (``soundwatch
events``, the dashboard) query it at the same time. Rows still ``open`` when a run starts
belong to a run that died: :meth:`History.close_interrupted` marks them ``interrupted``.
:meth:`History.repair` makes the rows and the clip files agree.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soundwatch.errors import SoundwatchError

log = logging.getLogger(__name__)

DB_NAME = "events.sqlite"
CLIPS_DIR = "clips"
SCHEMA_VERSION = 1
#: A clip file's name starts with its event's history id: ``123-kitchen-dog.flac``.
CLIP_NAME = re.compile(r"^(\d+)-.*\.(flac|wav|ogg)$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    label TEXT NOT NULL,
    event_id INTEGER NOT NULL,       -- the detector's id, per stream and run
    onset REAL NOT NULL,             -- Unix seconds, capture clock
    offset REAL,                     -- NULL while open or when interrupted
    peak REAL NOT NULL,
    model TEXT NOT NULL,
    state TEXT NOT NULL,             -- open | ended | interrupted
    clip TEXT,                       -- path relative to the record directory, or NULL
    clip_reason TEXT,                -- why there is no clip (or why it is short)
    clip_start REAL,
    clip_end REAL,
    clip_bytes INTEGER NOT NULL DEFAULT 0,
    clip_capped INTEGER NOT NULL DEFAULT 0,
    thresholds TEXT NOT NULL         -- JSON: the group's settings when the event started
);
CREATE INDEX IF NOT EXISTS events_onset ON events (onset);
CREATE TABLE IF NOT EXISTS changes (
    id INTEGER PRIMARY KEY,
    t REAL NOT NULL,                 -- Unix seconds
    origin TEXT NOT NULL,            -- control socket, MQTT, dashboard, reload
    command TEXT NOT NULL,
    detail TEXT NOT NULL             -- JSON
);
"""


@dataclass
class RepairReport:
    """What :meth:`History.repair` found and did."""

    missing_clips: int = 0  # rows whose clip file was gone: unlinked, with the reason
    relinked: int = 0  # clip files written but not yet linked (a crash between): linked
    orphans_removed: int = 0  # clip files of no event (or partial writes): deleted

    def __bool__(self) -> bool:
        return bool(self.missing_clips or self.relinked or self.orphans_removed)


def db_path(record_dir: Path) -> Path:
    return Path(record_dir) / DB_NAME


class History:
    """The events table of one record directory (a connection; one writer thread)."""

    def __init__(self, record_dir: str | Path, create: bool = True) -> None:
        self.dir = Path(record_dir)
        path = db_path(self.dir)
        if not create and not path.exists():
            raise SoundwatchError(
                f"no event history in {self.dir} ({DB_NAME} is missing); record one with "
                "soundwatch run --record DIR, or pass the directory with --record"
            )
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / CLIPS_DIR).mkdir(exist_ok=True)
            self.db = sqlite3.connect(path, check_same_thread=False, timeout=10.0)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            if create:
                self.db.executescript(_SCHEMA)
                self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                self.db.commit()
        except (OSError, sqlite3.Error) as error:
            raise SoundwatchError(f"cannot open the event history in {self.dir}: {error}") from None

    def close(self) -> None:
        self.db.close()

    # --- writer --------------------------------------------------------------------
    def next_id(self) -> int:
        """The id the next event gets (ids are assigned by the recorder, never reused)."""
        row = self.db.execute("SELECT max(id) FROM events").fetchone()
        return (row[0] or 0) + 1

    def insert_start(self, row: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO events (id, stream, label, event_id, onset, peak, model, state, "
            "clip_reason, thresholds) VALUES (:id, :stream, :label, :event_id, :onset, :peak, "
            ":model, 'open', 'pending: the event has not ended', :thresholds)",
            {**row, "thresholds": json.dumps(row["thresholds"])},
        )
        self.db.commit()

    def update_end(self, row_id: int, offset: float, peak: float, clip_reason: str) -> None:
        self.db.execute(
            "UPDATE events SET offset=?, peak=?, state='ended', clip_reason=? WHERE id=?",
            (offset, peak, clip_reason, row_id),
        )
        self.db.commit()

    def set_clip(
        self,
        row_id: int,
        clip: str | None,
        reason: str | None,
        span: tuple[float, float] | None = None,
        size: int = 0,
        capped: bool = False,
    ) -> None:
        start, end = span if span is not None else (None, None)
        self.db.execute(
            "UPDATE events SET clip=?, clip_reason=?, clip_start=?, clip_end=?, clip_bytes=?, "
            "clip_capped=? WHERE id=?",
            (clip, reason, start, end, size, int(capped), row_id),
        )
        self.db.commit()

    def close_interrupted(self) -> int:
        """Mark events left open by a run that died as interrupted; return how many."""
        cursor = self.db.execute(
            "UPDATE events SET state='interrupted', clip=NULL, clip_reason='interrupted: the "
            "run stopped before the event ended' WHERE state='open'"
        )
        self.db.commit()
        return cursor.rowcount

    def add_change(self, origin: str, command: str, detail: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO changes (t, origin, command, detail) VALUES (?, ?, ?, ?)",
            (time.time(), origin, command, json.dumps(detail)),
        )
        self.db.commit()

    def repair(self) -> RepairReport:
        """Make rows and clip files agree: unlink rows whose file is gone, link files
        written just before a crash, delete files no row can own (and partial writes)."""
        report = RepairReport()
        clips = self.dir / CLIPS_DIR
        linked = {
            r["clip"]: r["id"]
            for r in self.db.execute("SELECT id, clip FROM events WHERE clip IS NOT NULL")
        }
        for clip, row_id in linked.items():
            if not (self.dir / clip).is_file():
                self.set_clip(row_id, None, "clip file missing: deleted outside soundwatch")
                report.missing_clips += 1
        for path in sorted(clips.rglob("*")):
            if not path.is_file():
                continue
            relative = path.relative_to(self.dir).as_posix()
            if relative in linked:
                continue
            match = CLIP_NAME.match(path.name)
            row = None
            if match:
                row = self.db.execute(
                    "SELECT id, state, clip FROM events WHERE id=?", (int(match[1]),)
                ).fetchone()
            if row is not None and row["clip"] is None and row["state"] == "ended":
                self.set_clip(row["id"], relative, None, size=path.stat().st_size)
                report.relinked += 1
            else:
                path.unlink()
                report.orphans_removed += 1
        if report:
            log.warning(
                "event history in %s repaired: %d rows lost their clip file, %d clips relinked, "
                "%d orphan files removed",
                self.dir,
                report.missing_clips,
                report.relinked,
                report.orphans_removed,
            )
        return report

    # --- readers -------------------------------------------------------------------
    def query(
        self,
        since: float | None = None,
        until: float | None = None,
        label: str | None = None,
        stream: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Events whose onset lies in ``[since, until)``, oldest first (newest ``limit``)."""
        where, args = [], []
        for clause, value in (
            ("onset >= ?", since),
            ("onset < ?", until),
            ("label = ?", label),
            ("stream = ?", stream),
        ):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = "SELECT * FROM events" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY onset DESC, id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows = [self.as_dict(r) for r in self.db.execute(sql, args)]
        rows.reverse()
        return rows

    def get(self, row_id: int) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM events WHERE id=?", (row_id,)).fetchone()
        return self.as_dict(row) if row is not None else None

    def changes(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM changes ORDER BY id DESC LIMIT ?", (limit,))
        return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows][::-1]

    def clip_bytes(self) -> int:
        return int(self.db.execute("SELECT coalesce(sum(clip_bytes), 0) FROM events").fetchone()[0])

    def as_dict(self, row: sqlite3.Row) -> dict[str, Any]:
        """One row as ``soundwatch events --json`` prints it (clip: an absolute path)."""
        out = dict(row)
        out["clip"] = str((self.dir / row["clip"]).resolve()) if row["clip"] else None
        out["clip_capped"] = bool(row["clip_capped"])
        out["thresholds"] = json.loads(row["thresholds"])
        del out["clip_bytes"]
        return out

"""Retention: the history and its clips kept within an age and a total clip size.

Runs on the recorder's writer thread (the history's only writer), oldest first. Rows
older than ``max_age_days`` go with their clips; beyond ``max_bytes`` the oldest clips go
and their rows stay, saying why. The file is deleted before its row changes, so a crash in
between leaves a row whose file is missing, which :meth:`History.repair` fixes at the next
start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from soundwatch.recorder.config import RetentionConfig
from soundwatch.recorder.history import History

log = logging.getLogger(__name__)

SIZE_REASON = "removed by retention: clips over recorder.retention.max_bytes"


@dataclass
class RetentionReport:
    events_removed: int = 0  # rows (and their clips) older than max_age_days
    clips_removed: int = 0  # clips removed to stay under max_bytes


def enforce(history: History, config: RetentionConfig, now: float) -> RetentionReport:
    """Apply the age and size limits once; return what was removed."""
    report = RetentionReport()
    db = history.db
    if config.max_age_days is not None:
        cutoff = now - config.max_age_days * 86400.0
        old = db.execute(
            "SELECT id, clip FROM events WHERE onset < ? AND state != 'open'", (cutoff,)
        ).fetchall()
        for row in old:
            if row["clip"]:
                (history.dir / row["clip"]).unlink(missing_ok=True)
        db.executemany("DELETE FROM events WHERE id=?", [(row["id"],) for row in old])
        db.commit()
        report.events_removed = len(old)
    if config.max_bytes is not None:
        total = history.clip_bytes()
        if total > config.max_bytes:
            rows = db.execute(
                "SELECT id, clip, clip_bytes FROM events WHERE clip IS NOT NULL ORDER BY onset, id"
            )
            for row in rows.fetchall():
                if total <= config.max_bytes:
                    break
                (history.dir / row["clip"]).unlink(missing_ok=True)
                history.set_clip(row["id"], None, SIZE_REASON)
                total -= row["clip_bytes"]
                report.clips_removed += 1
    if report.events_removed or report.clips_removed:
        log.info(
            "retention: removed %d events older than %s days and %d clips over %s bytes",
            report.events_removed,
            config.max_age_days,
            report.clips_removed,
            config.max_bytes,
        )
    return report

"""Shared by the benchmarks: the machine they ran on, and writing their tables into
docs/performance.md."""

from __future__ import annotations

import platform
import re
from pathlib import Path

PERFORMANCE_MD = Path(__file__).resolve().parent.parent / "docs" / "performance.md"


def replace_section(heading: str, text: str, path: Path = PERFORMANCE_MD) -> None:
    """Replace the body of ``## heading`` (up to the next ``## ``) with ``text``."""
    content = path.read_text()
    pattern = re.compile(rf"(## {re.escape(heading)}\n)(.*?)(?=\n## |\Z)", re.S)
    if not pattern.search(content):
        raise SystemExit(f"no '## {heading}' section in {path}")
    body = "\n" + text.strip() + "\n"
    path.write_text(pattern.sub(lambda m: m.group(1) + body, content, count=1))


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"

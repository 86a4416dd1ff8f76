"""Write a benchmark's table into its ``## <heading>`` section of docs/performance.md."""

from __future__ import annotations

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

"""Reading the journal the fault-tier tasks write (see tasks.py)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any


def entries(path: Path) -> list[dict[str, Any]]:
    """Every journal line, in order ([] before the first write)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def events(path: Path, event: str, task_id: str | None = None) -> list[dict[str, Any]]:
    """The lines of one event kind, for one task or all."""
    return [e for e in entries(path) if e["event"] == event and (task_id is None or e["task"] == task_id)]


def executions(path: Path) -> Counter[str]:
    """Executions ("start" lines) per task id."""
    return Counter(e["task"] for e in entries(path) if e["event"] == "start")

"""Tasks of the fault tier: each execution leaves lines in a journal file, so tests count them.

A journal line is one JSON object: ``{"event": "start" | "end" | "cancelled", "task": id,
"pid": ..., "attempt": ..., "t": unix time}``. A "start" line is one execution.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from worker_sdk import Worker, current_task, task


def journal(path: str, event: str) -> None:
    """Appends one event of the running task to the journal at `path` (one write, O_APPEND)."""
    ctx = current_task()
    line = json.dumps({"event": event, "task": ctx.id, "pid": os.getpid(), "attempt": ctx.attempt,
                       "t": time.time()}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@task
def record(path: str, seconds: float = 0.0, tag: str = "", first_only: bool = False) -> dict[str, Any]:
    """Journals its start, works for `seconds` (stopping early when cancelled), journals its end.

    With `first_only`, only the first attempt takes time; later ones return at once. Returns
    who ran it: pid and attempt, plus `tag`.
    """
    ctx = current_task()
    journal(path, "start")
    if first_only and ctx.attempt > 1:
        seconds = 0.0
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        if ctx.cancelled:
            journal(path, "cancelled")
            return {"pid": os.getpid(), "attempt": ctx.attempt, "tag": tag, "cancelled": True}
        time.sleep(min(0.02, remaining))
    journal(path, "end")
    return {"pid": os.getpid(), "attempt": ctx.attempt, "tag": tag}


@task
def stubborn(path: str, seconds: float, first_only: bool = False) -> dict[str, Any]:
    """Like `record` but never looks at cancellation (an uncooperative task)."""
    ctx = current_task()
    journal(path, "start")
    time.sleep(0.0 if first_only and ctx.attempt > 1 else seconds)
    journal(path, "end")
    return {"pid": os.getpid(), "attempt": ctx.attempt}


@task
def poison(path: str) -> None:
    """Kills the worker process running it, every time (a poison message)."""
    journal(path, "start")
    os._exit(1)


worker = Worker(tasks=[record, stubborn, poison], queues=["default"])

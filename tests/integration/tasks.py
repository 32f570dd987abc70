"""Tasks the integration suite runs in real worker processes: the examples plus a few that leave traces.

Tests read what these tasks did from files whose paths they pass in the arguments, so a worker
process and the test process agree on what happened without sharing memory.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from worker_sdk import Retry, Worker, current_task, examples, task


def _append(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


@task
def record(path: str, label: str) -> str:
    """Appends `label` as a line to the file `path` (the order of lines is the order of runs)."""
    _append(path, label)
    return label


@task
def start_time() -> float:
    """Returns the wall-clock time at which the attempt started."""
    return time.time()


@task
def retry_after_then_succeed(path: str, seconds: float) -> int:
    """Appends the start time of each call to `path`; the first call asks for a retry after `seconds`."""
    _append(path, repr(time.time()))
    calls = len(Path(path).read_text(encoding="utf-8").splitlines())
    if calls == 1:
        raise Retry(after=seconds, reason="asked for an exact retry delay")
    return calls


@task
def wait_for_cancel(path: str, limit: float) -> str:
    """Writes "started", then waits up to `limit` seconds for a cancel; writes "saw cancel" if one came."""
    context = current_task()
    _append(path, "started")
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if context.cancelled:
            _append(path, "saw cancel")
            return "cancelled"
        time.sleep(0.02)
    _append(path, "no cancel")
    return "not cancelled"


@task
def total(values: list[int], extra: int = 0) -> int:
    """Sums a list (a chord callback's parents' results) plus `extra`."""
    return sum(values) + extra


@task(inline=True)
def inline_thread() -> str:
    """Runs on the worker's event loop: answers the name of the thread it ran on."""
    return threading.current_thread().name


worker = Worker(
    tasks=[
        examples.add,
        examples.sleep_then_add,
        examples.fail_times,
        examples.flaky,
        examples.always_fails,
        examples.reject,
        examples.lookup,
        examples.async_add,
        record,
        start_time,
        retry_after_then_succeed,
        wait_for_cancel,
        total,
        inline_thread,
    ],
    queues=["default"],
)

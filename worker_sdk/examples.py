"""Example tasks: what `make run` submits and what the integration and fault tests run."""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from worker_sdk import NonRetryableError, Retry, Worker, current_task, task


@task
def add(x: int, y: int) -> int:
    """Returns x + y."""
    return x + y


@task
def sleep_then_add(x: int, y: int, seconds: float) -> int:
    """Sleeps (checking for cancellation every 50 ms), then returns x + y."""
    _sleep(seconds)
    return x + y


def _sleep(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    context = current_task()
    while (remaining := deadline - time.monotonic()) > 0:
        if context.cancelled:
            return
        time.sleep(min(0.05, remaining))


def _count_attempt(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = int(path.read_text() or 0) + 1 if path.exists() else 1
    path.write_text(str(count))
    return count


@task
def fail_times(path: str, n: int) -> int:
    """Fails the first `n` calls, then returns the number of calls; the count lives in the file `path`."""
    count = _count_attempt(Path(path))
    if count <= n:
        raise RuntimeError(f"planned failure {count} of {n}")
    return count


@task
def flaky(key: str, failures: int, state_dir: str | None = None) -> str:
    """Fails `failures` times for `key`, then succeeds; counts in ``state_dir`` (default the temp dir)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
    path = Path(state_dir or tempfile.gettempdir()) / "conveyor-flaky" / f"{safe}.count"
    count = _count_attempt(path)
    if count <= failures:
        raise RuntimeError(f"flaky failure {count} of {failures} for {key!r}")
    return f"succeeded on call {count}"


@task
def always_fails() -> None:
    """Raises ValueError every time (retryable), so it ends in the dead-letter set."""
    raise ValueError("this task always fails")


class InvalidOrder(NonRetryableError):
    """An example of an error that must not be retried."""


@task
def reject(reason: str) -> None:
    """Fails for good at once: raises a NonRetryableError."""
    raise InvalidOrder(reason)


@task(dont_retry_on=(KeyError,))
def lookup(key: str) -> str:
    """Raises KeyError (listed in dont_retry_on, so not retried) unless the key is "known"."""
    return {"known": "value"}[key]


@task
def retry_once_after(path: str, seconds: float) -> int:
    """Asks for a retry after exactly `seconds` on the first call, succeeds on the next (count in `path`)."""
    count = _count_attempt(Path(path))
    if count == 1:
        raise Retry(after=seconds, reason="first call always retries")
    return count


@task
def long_task(seconds: float, steps: int = 10) -> str:
    """Works for `seconds` in `steps` steps, reporting progress; stops early when cancelled."""
    context = current_task()
    for step in range(steps):
        if context.cancelled:
            return f"stopped at step {step}"
        context.report_progress(step / steps, f"step {step + 1} of {steps}")
        _sleep(seconds / steps)
    context.report_progress(1.0, "done")
    return f"finished {steps} steps"


@task
def block(seconds: float) -> str:
    """Sleeps without looking at cancellation (an uncooperative task, for timeouts and drains)."""
    time.sleep(seconds)
    return "woke up"


@task
async def async_add(x: int, y: int, seconds: float = 0.0) -> int:
    """An async task: awaits `seconds` (cancellable at once), reports progress, returns x + y."""
    current_task().report_progress(0.0, "waiting")
    await asyncio.sleep(seconds)
    current_task().report_progress(1.0, "done")
    return x + y


@task
def whoami() -> dict[str, Any]:
    """Returns what the task knows of itself (its TaskContext)."""
    context = current_task()
    return {"id": context.id, "name": context.name, "queue": context.queue, "attempt": context.attempt,
            "max_attempts": context.max_attempts, "headers": dict(context.headers)}


@task
def size_of(data: bytes) -> int:
    """Takes a raw (non-JSON) payload, returns its length in bytes."""
    return len(data)


@task
def unserialisable() -> object:
    """Returns a value JSON cannot hold, so the attempt fails for good with a TypeError."""
    return object()


worker = Worker(
    tasks=[add, sleep_then_add, fail_times, flaky, always_fails, reject, lookup, retry_once_after, long_task,
           block, async_add, whoami, size_of, unserialisable],
    queues=["default"],
)

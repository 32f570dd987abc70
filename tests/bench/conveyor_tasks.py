"""The tasks the benchmark runs on Conveyor: a no-op add, a timestamping task and sleeps.

The two short ones are declared `inline=True`, as a user would declare a function that returns
at once: they run on the worker's event loop, like Celery's solo pool, with no thread hand-over.
"""

from __future__ import annotations

import asyncio
import time

from worker_sdk import Worker, task

QUEUE = "bench"


@task(name="bench.add", queue=QUEUE, inline=True)
def add(x: int, y: int) -> int:
    """The no-op task: returns x + y (also concatenates two strings, for the memory scenario)."""
    return x + y


@task(name="bench.stamp", queue=QUEUE, inline=True)
def stamp(i: int) -> float:
    """Returns the wall-clock time (time.time()) at which it started."""
    return time.time()


@task(name="bench.sleep", queue=QUEUE)
def sleep(seconds: float) -> int:
    """Blocks its thread for `seconds` (I/O-bound work on the thread pool)."""
    time.sleep(seconds)
    return 1


@task(name="bench.async_sleep", queue=QUEUE)
async def async_sleep(seconds: float) -> int:
    """Awaits `seconds` on the worker's event loop (I/O-bound work without threads)."""
    await asyncio.sleep(seconds)
    return 1


worker = Worker(tasks=[add, stamp, sleep, async_sleep], queues=[QUEUE])

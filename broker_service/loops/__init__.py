"""Background loops: one periodic concern per module, all with the same start/stop shape.

Every broker replica runs every loop. That is safe because each tick is one atomic script per
queue: two replicas sweeping the same queue at once cannot move a task twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
from abc import ABC, abstractmethod
from typing import Any

from broker_service.domain import StoreUnavailableError

log = logging.getLogger(__name__)
# Each pause between passes is the interval give or take this share: replicas started together
# drift apart, so the first to pass after a schedule's tick (or a lease's deadline) varies and the
# work spreads over them instead of one replica doing all of it while the others find nothing.
JITTER = 0.1


async def cancel_and_wait(task: asyncio.Task[Any], retry_every: float = 0.1) -> None:
    """Cancels `task` and waits until it has ended, cancelling it again while it carries on.

    On Python 3.11, asyncio.wait_for (which redis-py wraps around every command it sends)
    swallows a cancellation that lands as its inner future completes: one cancel() can be lost
    and a loop task then runs on, so a single cancel-and-await may never return.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=retry_every)
    if not task.cancelled():
        task.exception()  # retrieved: an error of the last tick is not "never retrieved"


class PeriodicLoop(ABC):
    """Runs `tick()` every `interval` seconds (±JITTER) until stopped; a failing tick is logged, not fatal."""

    name = "loop"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    @abstractmethod
    async def tick(self) -> None:
        """One pass over every queue."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def _run(self) -> None:
        unavailable = False
        while True:
            try:
                await self.tick()
                unavailable = False
            except StoreUnavailableError as exc:
                if not unavailable:
                    log.warning("%s: store unavailable: %s", self.name, exc)
                unavailable = True
            except Exception:
                log.exception("%s tick failed", self.name)
            await asyncio.sleep(self.interval * random.uniform(1 - JITTER, 1 + JITTER))

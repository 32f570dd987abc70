"""Background loops: one periodic concern per module, all with the same start/stop shape.

Every broker replica runs every loop. That is safe because each tick is one atomic script per
queue: two replicas sweeping the same queue at once cannot move a task twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod

from broker_service.domain import StoreUnavailableError

log = logging.getLogger(__name__)


class PeriodicLoop(ABC):
    """Runs `tick()` every `interval` seconds until stopped; a failing tick is logged, not fatal."""

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
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

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
            await asyncio.sleep(self.interval)

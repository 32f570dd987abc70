"""Housekeeping: schedule-to-start expiries, finished-task index trimming and queue-depth gauges."""

from __future__ import annotations

from broker_service.loops import PeriodicLoop
from broker_service.metrics import Metrics
from broker_service.store.store import Store

BATCH = 1000


class Janitor(PeriodicLoop):
    name = "janitor"

    def __init__(self, store: Store, metrics: Metrics, interval: float) -> None:
        super().__init__(interval)
        self._store = store
        self._metrics = metrics

    async def tick(self) -> None:
        for queue in await self._store.queues():
            expired = await self._store.expire(queue, BATCH)
            self._metrics.expired.labels(queue).inc(len(expired))
            await self._store.trim(queue, BATCH)
            for state, depth in (await self._store.depths(queue)).items():
                self._metrics.depth.labels(queue, state.label).set(depth)
            self._metrics.held.labels(queue).set(await self._store.held_count(queue))

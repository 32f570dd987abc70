"""Delayed and backing-off tasks whose time has come move to their queue (and ready tasks that a
broker before 0.8 stored in its `queued` sorted set move into the packed form: promote.lua)."""

from __future__ import annotations

from broker_service.loops import PeriodicLoop
from broker_service.store.store import Store

BATCH = 1000


class Promoter(PeriodicLoop):
    name = "promoter"

    def __init__(self, store: Store, interval: float) -> None:
        super().__init__(interval)
        self._store = store

    async def tick(self) -> None:
        for queue in await self._store.queues():
            while await self._store.promote(queue, BATCH) >= BATCH:
                pass

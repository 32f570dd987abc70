"""Expired leases and timed-out attempts: put back, retried, dead-lettered or cancelled."""

from __future__ import annotations

import random

from broker_service.domain import RedeliveryReason
from broker_service.loops import PeriodicLoop
from broker_service.metrics import Metrics
from broker_service.store.store import Store

BATCH = 500


class Reaper(PeriodicLoop):
    name = "reaper"

    def __init__(self, store: Store, metrics: Metrics, interval: float) -> None:
        super().__init__(interval)
        self._store = store
        self._metrics = metrics

    async def tick(self) -> None:
        for queue in await self._store.queues():
            while True:
                result = await self._store.reap(queue, BATCH, random.random())
                m = self._metrics
                m.redeliveries.labels(queue, RedeliveryReason.LEASE_EXPIRED.value).inc(len(result.requeued))
                m.retried.labels(queue).inc(len(result.timed_out))
                m.failed.labels(queue).inc(len(result.dead))
                m.cancelled.labels(queue).inc(len(result.cancelled))
                handled = len(result.requeued) + len(result.timed_out) + len(result.dead) + len(result.cancelled)
                if handled < BATCH:
                    break

"""Health follows the store: services are NOT_SERVING while Redis cannot be reached."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from grpc_health.v1 import health, health_pb2

from broker_service.domain import StoreUnavailableError
from broker_service.loops import PeriodicLoop
from broker_service.metrics import Metrics
from broker_service.store.store import Store

log = logging.getLogger(__name__)
READINESS = "conveyor.readiness"


class Readiness(PeriodicLoop):
    name = "readiness"

    def __init__(self, store: Store, health_servicer: health.aio.HealthServicer,
                 services: Sequence[str], interval: float, metrics: Metrics | None = None) -> None:
        super().__init__(interval)
        self._store = store
        self._metrics = metrics
        self._health = health_servicer
        self._services = [READINESS, *services]
        self._ready: bool | None = None

    async def tick(self) -> None:
        try:
            await self._store.ping()
            ready = True
        except StoreUnavailableError:
            ready = False
        if self._metrics is not None:
            self._metrics.store_up.set(1 if ready else 0)
            if not ready:
                self._metrics.store_errors.inc()
        if ready != self._ready:
            if self._ready is not None:
                log.warning("store %s", "reachable again" if ready else "unreachable: services NOT_SERVING")
            self._ready = ready
            status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
            for service in self._services:
                await self._health.set(service, status)

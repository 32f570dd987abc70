"""AdminService: queue limits and periodic schedules; validate, call the store, convert."""

from __future__ import annotations

from typing import Any

from conveyor.v1 import admin_service_pb2_grpc as adm_grpc

from broker_service.api import validate
from broker_service.metrics import Metrics
from broker_service.store.store import Store

Context = Any  # grpc.aio.ServicerContext (grpc ships no type information)


class AdminService(adm_grpc.AdminServiceServicer):
    """conveyor.v1.AdminService. RPCs not written yet answer UNIMPLEMENTED (the generated base)."""

    def __init__(self, store: Store, metrics: Metrics, limits: validate.Limits) -> None:
        self._store = store
        self._metrics = metrics
        self._limits = limits

    # Queues: SetQueueLimits, GetQueue, ListQueues.

    # Schedules: PutSchedule, GetSchedule, ListSchedules, PauseSchedule, ResumeSchedule, DeleteSchedule.


"""AdminService: queue limits and periodic schedules; validate, call the store, convert."""

from __future__ import annotations

from typing import Any

from conveyor.v1 import admin_service_pb2 as adm
from conveyor.v1 import admin_service_pb2_grpc as adm_grpc

from broker_service.api import convert, validate
from broker_service.api.errors import unary
from broker_service.domain import QueueLimits
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

    @unary
    async def SetQueueLimits(self, request: adm.SetQueueLimitsRequest,
                             context: Context) -> adm.SetQueueLimitsResponse:
        queue = validate.queue_name(request.queue, "queue")
        limits = validate.queue_limits(request.limits, "limits") if request.HasField("limits") else QueueLimits()
        await self._store.register_queues([queue])
        await self._store.set_limits(queue, limits)
        return adm.SetQueueLimitsResponse(queue=convert.queue(await self._store.queue_info(queue)))

    @unary
    async def GetQueue(self, request: adm.GetQueueRequest, context: Context) -> adm.GetQueueResponse:
        queue = validate.queue_name(request.queue, "queue")
        return adm.GetQueueResponse(queue=convert.queue(await self._store.queue_info(queue)))

    @unary
    async def ListQueues(self, request: adm.ListQueuesRequest, context: Context) -> adm.ListQueuesResponse:
        infos = await self._store.queue_infos(await self._store.queues())
        return adm.ListQueuesResponse(queues=[convert.queue(info) for info in infos])

    # Schedules: PutSchedule, GetSchedule, ListSchedules, PauseSchedule, ResumeSchedule, DeleteSchedule.


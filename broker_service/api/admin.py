"""AdminService: queue limits and periodic schedules; validate, call the store, convert."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from conveyor.v1 import admin_service_pb2 as adm
from conveyor.v1 import admin_service_pb2_grpc as adm_grpc

from broker_service.api import convert, schedules, validate
from broker_service.api.errors import invalid_argument, not_found, unary
from broker_service.domain import QueueLimits
from broker_service.metrics import Metrics
from broker_service.schedule import ScheduleNotFoundError
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

    @unary
    async def PutSchedule(self, request: adm.PutScheduleRequest, context: Context) -> adm.PutScheduleResponse:
        if not request.HasField("schedule"):
            raise invalid_argument("schedule", "required")
        now = await self._store.now_ms()
        spec = schedules.spec(request.schedule, self._limits, now)
        stored, created = await self._store.put_schedule(spec, now, schedules.first_tick(spec, now))
        return adm.PutScheduleResponse(schedule=schedules.schedule(stored), created=created)

    @unary
    async def GetSchedule(self, request: adm.GetScheduleRequest, context: Context) -> adm.GetScheduleResponse:
        schedule_id = schedules.schedule_id(request.id)
        with _schedule_not_found(schedule_id):
            stored = await self._store.get_schedule(schedule_id)
        return adm.GetScheduleResponse(schedule=schedules.schedule(stored))

    @unary
    async def ListSchedules(self, request: adm.ListSchedulesRequest,
                            context: Context) -> adm.ListSchedulesResponse:
        size = schedules.page_size(request.page_size)
        page, last = await self._store.list_schedules(schedules.page_after(request.page_token), size)
        return adm.ListSchedulesResponse(schedules=[schedules.schedule(s) for s in page],
                                         next_page_token=schedules.page_token(last))

    @unary
    async def PauseSchedule(self, request: adm.PauseScheduleRequest, context: Context) -> adm.PauseScheduleResponse:
        schedule_id = schedules.schedule_id(request.id)
        with _schedule_not_found(schedule_id):
            stored = await self._store.pause_schedule(schedule_id)
        return adm.PauseScheduleResponse(schedule=schedules.schedule(stored))

    @unary
    async def ResumeSchedule(self, request: adm.ResumeScheduleRequest,
                             context: Context) -> adm.ResumeScheduleResponse:
        schedule_id = schedules.schedule_id(request.id)
        with _schedule_not_found(schedule_id):
            stored = await self._store.resume_schedule(schedule_id)
        return adm.ResumeScheduleResponse(schedule=schedules.schedule(stored))

    @unary
    async def DeleteSchedule(self, request: adm.DeleteScheduleRequest,
                             context: Context) -> adm.DeleteScheduleResponse:
        schedule_id = schedules.schedule_id(request.id)
        with _schedule_not_found(schedule_id):
            await self._store.delete_schedule(schedule_id)
        return adm.DeleteScheduleResponse()


@contextlib.contextmanager
def _schedule_not_found(schedule_id: str) -> Iterator[None]:
    try:
        yield
    except ScheduleNotFoundError:
        raise not_found("schedule", schedule_id) from None


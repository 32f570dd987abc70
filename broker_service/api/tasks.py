"""TaskService: validate, call the store, convert; errors leave as mapped statuses."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

from conveyor.v1 import task_service_pb2 as ts
from conveyor.v1 import task_service_pb2_grpc as ts_grpc

from broker_service.api import convert, validate
from broker_service.api.errors import invalid_argument, server_stream, unary
from broker_service.api.sessions import Sessions
from broker_service.dispatch import Dispatcher, enqueue
from broker_service.domain import NewTask, TaskRecord, TaskState, make_task_id
from broker_service.events import EventHub
from broker_service.metrics import Metrics
from broker_service.store.store import EnqueueResult, Store

Context = Any  # grpc.aio.ServicerContext (grpc ships no type information)
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


class TaskService(ts_grpc.TaskServiceServicer):
    """conveyor.v1.TaskService."""

    def __init__(self, store: Store, hub: EventHub, metrics: Metrics, limits: validate.Limits,
                 *, wait_poll_seconds: float, client_sessions: bool = True,
                 dispatcher: Dispatcher | None = None) -> None:
        self.sessions = Sessions(store, hub, metrics, limits, wait_poll_seconds=wait_poll_seconds,
                                 enabled=client_sessions, dispatcher=dispatcher)
        self._store = store
        self._dispatcher = dispatcher
        self._hub = hub
        self._metrics = metrics
        self._limits = limits
        self._wait_poll = wait_poll_seconds
        self._known_queues: set[str] = set()

    async def _enqueue(self, tasks: list[NewTask]) -> list[EnqueueResult]:
        """Writes the tasks, one store call per queue; their results in the order given."""
        by_queue: dict[str, list[int]] = defaultdict(list)
        for i, task in enumerate(tasks):
            by_queue[task.queue].append(i)
        new_queues = [q for q in by_queue if q not in self._known_queues]
        if new_queues:
            await self._store.register_queues(new_queues)
            self._known_queues.update(new_queues)
        if len(by_queue) == 1:  # the usual case: the results are in order already
            [(queue, _)] = by_queue.items()
            results, _ = await enqueue(self._store, self._dispatcher, queue, tasks)
            self._count(queue, results)
            return results
        written = await asyncio.gather(*(enqueue(self._store, self._dispatcher, queue, [tasks[i] for i in indexes])
                                         for queue, indexes in by_queue.items()))
        placed: dict[int, EnqueueResult] = {}
        for (queue, indexes), (results, _) in zip(by_queue.items(), written, strict=True):
            self._count(queue, results)
            placed.update(zip(indexes, results, strict=True))
        return [placed[i] for i in range(len(tasks))]

    def _count(self, queue: str, results: list[EnqueueResult]) -> None:
        self._metrics.enqueued.labels(queue).inc(sum(not r.duplicate for r in results))
        for result in results:
            if result.duplicate:
                self._metrics.duplicates.labels(queue, result.duplicate_kind).inc()

    @unary
    async def EnqueueTask(self, request: ts.EnqueueTaskRequest, context: Context) -> ts.EnqueueTaskResponse:
        if not request.HasField("task"):
            raise invalid_argument("task", "required")
        task = validate.submitted_task(request.task, "task", self._limits, _now_ms())
        [result] = await self._enqueue([task])
        return ts.EnqueueTaskResponse(task_id=make_task_id(result.ulid, task.queue), state=_state(result),
                                      duplicate=result.duplicate)

    @unary
    async def BatchEnqueueTasks(self, request: ts.BatchEnqueueTasksRequest,
                                context: Context) -> ts.BatchEnqueueTasksResponse:
        has_template = request.HasField("template")
        if request.payloads and not has_template:
            raise invalid_argument("template", "required with payloads")
        if has_template and not request.payloads:
            raise invalid_argument("payloads", "at least one is required with a template")
        count = len(request.tasks) + len(request.payloads)
        if not count:
            raise invalid_argument("tasks", "at least one task is required")
        if count > self._limits.max_batch_size:
            raise invalid_argument("tasks", f"{count} tasks is over the limit of "
                                   f"{self._limits.max_batch_size} per call")
        now = _now_ms()
        tasks = validate.task_specs(request.tasks, "tasks", self._limits, now)
        if has_template:
            tasks += validate.template_tasks(request.template, request.payloads, self._limits, now)
        results = await self._enqueue(tasks)
        return ts.BatchEnqueueTasksResponse(
            task_ids=[make_task_id(r.ulid, t.queue) for r, t in zip(results, tasks, strict=True)],
            duplicates=[r.duplicate for r in results])

    @unary
    async def GetTask(self, request: ts.GetTaskRequest, context: Context) -> ts.GetTaskResponse:
        ulid, queue = validate.task_id(request.task_id)
        record = await self._store.get(queue, ulid)
        return ts.GetTaskResponse(task=convert.task(record))

    @server_stream
    async def WaitTask(self, request: ts.WaitTaskRequest, context: Context) -> AsyncIterator[ts.WaitTaskResponse]:
        ulid, queue = validate.task_id(request.task_id)
        if request.HasField("timeout") and (request.timeout.seconds < 0 or request.timeout.nanos < 0):
            raise invalid_argument("timeout", "must not be negative")
        budget = validate.duration_ms(request.timeout) / 1000 if request.HasField("timeout") else None
        remaining = context.time_remaining()
        if remaining is not None:
            budget = remaining if budget is None else min(budget, remaining)
        deadline = None if budget is None else time.monotonic() + budget

        changed = asyncio.Event()
        ends = self._hub.ends
        handed: list[TaskRecord] = []  # the end a worker session here stored, read with its write

        def listener(kind: str, ulids: str) -> None:
            if (ulid in ulids and not ends.is_storing(queue, ulid)) or kind == "resync":
                changed.set()

        def ended(_queue: str, _ulid: str, record: TaskRecord | None) -> None:
            if record is not None:
                handed.append(record)
            changed.set()

        self._hub.add(queue, listener, running=True)
        ends.watch(queue, ulid, ended)
        try:
            last: tuple[Any, ...] | None = None
            while True:
                changed.clear()
                record = handed.pop() if handed else await self._store.get(queue, ulid)
                seen = _fingerprint(record)
                if seen != last:
                    last = seen
                    yield ts.WaitTaskResponse(task=convert.task(record))
                if record.state.terminal:
                    return
                timeout = self._wait_poll
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    timeout = min(timeout, left)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout)
        finally:
            self._hub.remove(queue, listener)
            ends.unwatch(queue, ulid, ended)

    @unary
    async def CancelTask(self, request: ts.CancelTaskRequest, context: Context) -> ts.CancelTaskResponse:
        ulid, queue = validate.task_id(request.task_id)
        reason = validate.reason(request.reason)
        state = await self._store.cancel(queue, ulid, reason or "cancelled")
        if state is TaskState.CANCELLED:
            self._metrics.cancelled.labels(queue).inc()
        return ts.CancelTaskResponse(state=int(state))

    @unary
    async def ListTasks(self, request: ts.ListTasksRequest, context: Context) -> ts.ListTasksResponse:
        queue = validate.queue_name(request.queue, "queue")
        state = validate.state(request.state)
        if request.page_size > MAX_PAGE_SIZE:
            raise invalid_argument("page_size", f"at most {MAX_PAGE_SIZE}")
        try:
            page = await self._store.list_tasks(queue, state, request.page_size or DEFAULT_PAGE_SIZE,
                                                request.page_token)
        except ValueError:
            raise invalid_argument("page_token", "malformed or from another listing") from None
        return ts.ListTasksResponse(tasks=[convert.task(t, with_data=False) for t in page.tasks],
                                    next_page_token=page.next_cursor)

    # --- client sessions: batched submits and result waits on one stream (api/sessions.py) ---

    async def OpenSession(self, request_iterator: AsyncIterator[ts.SessionRequest],
                          context: Context) -> AsyncIterator[ts.SessionResponse]:
        async for response in self.sessions.serve(request_iterator, context):
            yield response


def _fingerprint(record: TaskRecord) -> tuple[Any, ...]:
    return (record.state, record.attempt, record.progress, record.progress_message, record.cancel_requested)


def _state(result: EnqueueResult) -> int:
    """The wire state of an enqueue's answer (UNSPECIFIED: a duplicate whose record has expired)."""
    return 0 if result.state is None else int(result.state)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000

"""The asyncio client and the handle it returns for each submitted task."""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, ParamSpec, TypeAlias, TypeVar, Unpack, overload

import grpc
from conveyor.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    task_service_pb2,
    task_service_pb2_grpc,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)

from client_sdk import _convert, _queues, _schedules, _workflow
from client_sdk._channel import channel_options
from client_sdk._client import DEFAULT_TARGET, DEFAULT_TIMEOUT, STREAM_SLACK, SUBMIT_ATTEMPTS, WAIT_RECONNECTS
from client_sdk._errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    TaskTimeoutError,
    UnavailableError,
    from_rpc_error,
)
from client_sdk._models import TaskInfo, TaskState
from client_sdk._queues import QueueInfo, QueueLimits
from client_sdk._schedule_models import MissedTicks, ScheduleInfo, Trigger
from client_sdk._session import AsyncSessionCalls
from client_sdk._task import Signature, TaskDefinition, TaskOptions, _SubmitOverrides

__all__ = ["AsyncClient", "AsyncTaskHandle"]

P = ParamSpec("P")
_TaskSpec: TypeAlias = task_service_pb2.TaskSpec
R = TypeVar("R")


class AsyncTaskHandle:
    """A task submitted through an `AsyncClient`: its id plus that client.

    Attributes:
        id: The task id, ``"<ulid>@<queue>"``.
        client: The client used for every call on this handle.
        duplicate: True when the submit matched an idempotency or unique key: nothing was
            stored and ``id`` is the existing task's.
    """

    __slots__ = ("client", "duplicate", "id")

    def __init__(self, task_id: str, client: AsyncClient, duplicate: bool = False) -> None:
        """Wraps a task id.

        Args:
            task_id: The task id.
            client: The client to call the broker with.
            duplicate: Whether the submit answered an existing task.
        """
        self.id = task_id
        self.client = client
        self.duplicate = duplicate

    @property
    def queue(self) -> str:
        """The queue the task was submitted to (it is part of the id)."""
        return self.id.rpartition("@")[2]

    async def get(self) -> TaskInfo:
        """Reads the task; see `AsyncClient.get`."""
        return await self.client.get(self.id)

    async def wait(self, timeout: float | None = None) -> TaskInfo:
        """Waits until the task finishes; see `AsyncClient.wait`."""
        return await self.client.wait(self.id, timeout)

    async def result(self, timeout: float | None = None) -> Any:
        """Waits for the task and returns its result; see `AsyncClient.result`."""
        return await self.client.result(self.id, timeout)

    async def cancel(self, reason: str = "") -> TaskState:
        """Cancels the task; see `AsyncClient.cancel`."""
        return await self.client.cancel(self.id, reason)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncTaskHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<AsyncTaskHandle {self.id}>"


class AsyncClient:
    """An asyncio Conveyor client over one ``grpc.aio`` channel, with the methods of `Client`.

    The channel is opened on the first call, inside the running event loop; use the client
    from that loop only. Every call has a deadline: the client's ``timeout`` unless the call
    is given its own.

    Example:
        >>> async with AsyncClient("localhost:50051") as client:
        ...     handle = await client.enqueue(add, 1, 2)
        ...     await handle.result(timeout=30)
        3
    """

    def __init__(self, target: str = DEFAULT_TARGET, *, timeout: float = DEFAULT_TIMEOUT,
                 credentials: grpc.ChannelCredentials | None = None,
                 options: Sequence[tuple[str, Any]] = ()) -> None:
        """Records the settings; the channel opens on the first call.

        Args:
            target: The broker address, ``host:port`` or any gRPC target string.
            timeout: Default deadline of each call, in seconds.
            credentials: TLS channel credentials; None for plain text.
            options: Extra gRPC channel options, overriding the SDK's by name.
        """
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.target = target
        self.timeout = timeout
        self._credentials = credentials
        self._options = channel_options(options)
        self._channel: Any = None
        self._stub_instance: Any = None
        self._admin_stub: Any = None
        # Submits and waits travel on one session stream (unary RPCs on a broker without sessions).
        self._sessions = AsyncSessionCalls(lambda: self._stub, timeout)
        self._batch_templates = True  # False once the broker showed it predates template batches

    @property
    def _stub(self) -> Any:
        if self._stub_instance is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self.target, options=self._options)
            else:
                self._channel = grpc.aio.secure_channel(self.target, self._credentials, options=self._options)
            self._stub_instance = task_service_pb2_grpc.TaskServiceStub(self._channel)
        return self._stub_instance

    async def _call(self, method_name: str, request: Any, timeout: float | None, *, admin: bool = False) -> Any:
        stub = self._stub
        if admin:
            if self._admin_stub is None:
                self._admin_stub = admin_service_pb2_grpc.AdminServiceStub(self._channel)
            stub = self._admin_stub
        method = getattr(stub, method_name)
        try:
            return await method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    async def _submit(self, spec: _TaskSpec, timeout: float | None) -> AsyncTaskHandle:
        """One submit, on the session (or EnqueueTask); with an idempotency key, UNAVAILABLE is
        retried (see `Client`)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        attempt = 0
        while True:
            attempt += 1
            try:
                task_id, duplicate = await self._sessions.submit(spec, max(0.001, deadline - time.monotonic()))
            except UnavailableError:
                left = deadline - time.monotonic()
                if not spec.idempotency_key or attempt >= SUBMIT_ATTEMPTS or left <= 0:
                    raise
                await asyncio.sleep(_convert.reconnect_delay(attempt, left))
                continue
            return AsyncTaskHandle(task_id, self, duplicate)

    def handle(self, task_id: str) -> AsyncTaskHandle:
        """A handle of an existing task, by id (no call is made)."""
        return AsyncTaskHandle(task_id, self)

    @overload
    async def enqueue(self, task: TaskDefinition[P, R], /, *args: P.args,
                      **kwargs: P.kwargs) -> AsyncTaskHandle: ...

    @overload
    async def enqueue(self, task: Signature | str, /, *args: Any, **kwargs: Any) -> AsyncTaskHandle: ...

    async def enqueue(self, task: TaskDefinition[Any, Any] | Signature | str, /, *args: Any,
                      **kwargs: Any) -> AsyncTaskHandle:
        """Submits one task with its arguments encoded as JSON; see `Client.enqueue`.

        Args:
            task: A task definition, a signature or a bare task name.
            *args: Positional arguments of the task.
            **kwargs: Keyword arguments of the task.

        Returns:
            A handle of the new task.

        Raises:
            TypeError: If the arguments do not fit the function or are not JSON-serialisable.
            InvalidArgumentError: If the broker refused a field.
            UnavailableError: If the broker or its store could not be reached.
        """
        return await self._submit(_convert.signature_spec(_convert.to_signature(task, args, kwargs)), None)

    async def enqueue_many(self, signatures: Iterable[Signature], *,
                           timeout: float | None = None) -> builtins.list[AsyncTaskHandle]:
        """Submits many tasks with BatchEnqueueTasks, in chunks; see `Client.enqueue_many`.

        Args:
            signatures: The tasks.
            timeout: Deadline of each chunk's call, in seconds; default the client's.

        Returns:
            Handles of the new tasks, in the order given.

        Raises:
            TypeError: If some arguments are not JSON-serialisable (nothing is submitted).
            InvalidArgumentError: If the broker refused a task.
            UnavailableError: If the broker or its store could not be reached.
        """
        handles: builtins.list[AsyncTaskHandle] = []
        for request in _convert.batch_requests(signatures, templates=self._batch_templates):
            try:
                response: task_service_pb2.BatchEnqueueTasksResponse = await self._call(
                    "BatchEnqueueTasks", request, timeout)
            except InvalidArgumentError as exc:
                if not _convert.needs_spelling_out(exc, request):
                    _convert.name_batch_field(exc, request)
                    raise
                response = await self._call("BatchEnqueueTasks", _convert.spelled_out(request), timeout)
                self._batch_templates = False  # a broker older than templates: it took the spelled-out form
            duplicates = list(response.duplicates) or [False] * len(response.task_ids)
            handles.extend(AsyncTaskHandle(task_id, self, duplicate)
                           for task_id, duplicate in zip(response.task_ids, duplicates, strict=True))
        return handles

    async def submit(self, queue: str, name: str, payload: bytes, *,
                     content_type: str = _convert.JSON_CONTENT_TYPE, rpc_timeout: float | None = None,
                     **options: Unpack[_SubmitOverrides]) -> AsyncTaskHandle:
        """Submits a task with a payload the caller encoded; see `Client.submit`.

        Args:
            queue: Queue to submit to.
            name: Task name.
            payload: The payload, passed to the worker as is.
            content_type: Media type of the payload.
            rpc_timeout: Deadline of the call, in seconds; default the client's (``timeout``
                here is the task's execution timeout, as everywhere in `TaskOptions`).
            **options: Any other field of `TaskOptions` (``priority``, ``delay``, ``headers``...).

        Returns:
            A handle of the new task.
        """
        spec = _convert.task_spec(name, bytes(payload), content_type, TaskOptions(queue=queue, **options))
        return await self._submit(spec, rpc_timeout)

    async def get(self, task_id: str, *, timeout: float | None = None) -> TaskInfo:
        """Reads one task; see `Client.get`.

        Args:
            task_id: The task id.
            timeout: Deadline of the call, in seconds; default the client's.

        Returns:
            The task as stored.
        """
        response: task_service_pb2.GetTaskResponse = await self._call(
            "GetTask", task_service_pb2.GetTaskRequest(task_id=task_id), timeout)
        return _convert.task_info(response.task)

    async def wait(self, task_id: str, timeout: float | None = None) -> TaskInfo:
        """Waits until the task reaches a terminal state, over the WaitTask stream; see `Client.wait`.

        Args:
            task_id: The task id.
            timeout: Longest time to wait, in seconds; default the client's timeout.

        Returns:
            The task in its terminal state.

        Raises:
            TaskTimeoutError: If the task did not finish in time.
            NotFoundError: If the task is unknown.
            UnavailableError: If the broker could not be reached.
            DeadlineExceededError: If the broker did not answer at all in time.
        """
        budget = self.timeout if timeout is None else timeout
        if budget <= 0:
            return _convert.terminal_or_timeout(await self.get(task_id), budget)
        deadline = time.monotonic() + budget
        waited = await self._sessions.wait(task_id, budget, deadline) if self._sessions.enabled else None
        if waited is not None:
            return waited
        last: TaskInfo | None = None
        failures = 0
        while (remaining := deadline - time.monotonic()) > 0:
            call = self._stub.WaitTask(_convert.wait_request(task_id, remaining),
                                       timeout=remaining + STREAM_SLACK)
            try:
                async for response in call:
                    last, failures = _convert.task_info(response.task), 0
                    if last.terminal:
                        return last
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                if isinstance(error, DeadlineExceededError) and last is not None:
                    break
                failures += 1
                # Reconnect only to a broker that answered before: one that never did is down.
                if not isinstance(error, UnavailableError) or last is None or failures >= WAIT_RECONNECTS:
                    raise error from exc
                await asyncio.sleep(_convert.reconnect_delay(failures, deadline - time.monotonic()))
                continue
            finally:
                call.cancel()
            await asyncio.sleep(_convert.reconnect_delay(0, deadline - time.monotonic()))
        raise TaskTimeoutError(task_id, budget, last)

    async def call(self, task: TaskDefinition[Any, Any] | Signature | str, *, timeout: float | None = None) -> Any:
        """Submits a task and returns its result in one round trip; see `Client.call`."""
        budget = self.timeout if timeout is None else timeout
        spec = _convert.signature_spec(_convert.to_signature(task, (), {}))
        started = time.monotonic()
        answer = await self._sessions.submit_and_wait(spec, budget) if self._sessions.enabled else None
        if answer is None:
            handle = await self._submit(spec, budget)
            return await handle.result(max(0.0, budget - (time.monotonic() - started)))
        return _convert.call_outcome(answer, budget)

    async def result(self, task_id: str, timeout: float | None = None) -> Any:
        """Waits for the task and returns its result; see `Client.result`.

        Args:
            task_id: The task id.
            timeout: Longest time to wait, in seconds; default the client's timeout.

        Returns:
            The decoded JSON result, or the raw bytes when its content type is not JSON.

        Raises:
            TaskFailedError: If the task failed.
            TaskCancelledError: If the task was cancelled.
            TaskExpiredError: If the task expired before it started.
            TaskTimeoutError: If the task did not finish in time.
        """
        return _convert.outcome(await self.wait(task_id, timeout))

    async def cancel(self, task_id: str, reason: str = "", *, timeout: float | None = None) -> TaskState:
        """Cancels a task; see `Client.cancel`.

        Args:
            task_id: The task id.
            reason: Free text stored with the task.
            timeout: Deadline of the call, in seconds; default the client's.

        Returns:
            CANCELLED, or RUNNING while the worker running it is told to stop.
        """
        response: task_service_pb2.CancelTaskResponse = await self._call(
            "CancelTask", task_service_pb2.CancelTaskRequest(task_id=task_id, reason=reason), timeout)
        return TaskState.parse(response.state)

    async def list(self, queue: str, state: TaskState | str, page_size: int = 100, *,
                   timeout: float | None = None) -> AsyncIterator[TaskInfo]:
        """Lists a queue's tasks in one state, oldest first; see `Client.list`.

        Args:
            queue: The queue.
            state: The state, as a `TaskState` or its name (``"queued"``).
            page_size: Tasks per call, 1 to 1000.
            timeout: Deadline of each page's call, in seconds; default the client's.

        Yields:
            The tasks.
        """
        request = task_service_pb2.ListTasksRequest(queue=queue, state=TaskState.parse(state),
                                                    page_size=page_size)
        while True:
            response: task_service_pb2.ListTasksResponse = await self._call("ListTasks", request, timeout)
            for message in response.tasks:
                yield _convert.task_info(message)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    # Queues and their limits.

    async def set_queue_limits(self, queue: str, *, max_running: int = 0, rate_per_second: float = 0.0,
                               rate_burst: int = 0, timeout: float | None = None) -> QueueInfo:
        """Replaces a queue's limits; see `Client.set_queue_limits`.

        Args:
            queue: The queue.
            max_running: Most tasks of the queue running at once; 0 for no limit.
            rate_per_second: Most tasks started per second; 0 for no limit.
            rate_burst: Tasks that may start at once after a quiet spell; 0 for
                ``max(1, rate_per_second)``.
            timeout: Deadline of the call, in seconds; default the client's.

        Returns:
            The queue with its new limits.
        """
        limits = QueueLimits(max_running=max_running, rate_per_second=rate_per_second, rate_burst=rate_burst)
        response: admin_service_pb2.SetQueueLimitsResponse = await self._call(
            "SetQueueLimits", _queues.limits_request(queue, limits), timeout, admin=True)
        return _queues.queue_info(response.queue)

    async def get_queue(self, queue: str, *, timeout: float | None = None) -> QueueInfo:
        """Reads a queue: its limits and task counts; see `Client.get_queue`.

        Args:
            queue: The queue.
            timeout: Deadline of the call, in seconds; default the client's.

        Returns:
            The queue.
        """
        response: admin_service_pb2.GetQueueResponse = await self._call(
            "GetQueue", admin_service_pb2.GetQueueRequest(queue=queue), timeout, admin=True)
        return _queues.queue_info(response.queue)

    async def list_queues(self, *, timeout: float | None = None) -> builtins.list[QueueInfo]:
        """Every queue ever submitted to (or given limits), by name.

        Args:
            timeout: Deadline of the call, in seconds; default the client's.

        Returns:
            The queues.
        """
        response: admin_service_pb2.ListQueuesResponse = await self._call(
            "ListQueues", admin_service_pb2.ListQueuesRequest(), timeout, admin=True)
        return [_queues.queue_info(q) for q in response.queues]
    # Workflows.

    def _workflow_stub(self) -> Any:
        self._stub  # noqa: B018 - opens the channel
        return workflow_service_pb2_grpc.WorkflowServiceStub(self._channel)

    async def submit_workflow(self, flow: _workflow.Flow, *, name: str = "", idempotency_key: str = "",
                              idempotency_ttl: float | None = None,
                              timeout: float | None = None) -> _workflow.AsyncWorkflowHandle:
        """Submits a workflow in one call; see `Client.submit_workflow`."""
        request, shape = _workflow.submit_request(flow, name=name, idempotency_key=idempotency_key,
                                                  idempotency_ttl=idempotency_ttl)
        response = await self._workflow_call("SubmitWorkflow", request, timeout)
        return _workflow.AsyncWorkflowHandle(response.workflow_id, self, task_ids=dict(response.task_ids),
                                             shape=shape, duplicate=response.duplicate)

    def workflow(self, workflow_id: str) -> _workflow.AsyncWorkflowHandle:
        """A handle of an existing workflow, by id (no call is made)."""
        return _workflow.AsyncWorkflowHandle(workflow_id, self)

    async def _workflow_call(self, method_name: str, request: Any, timeout: float | None) -> Any:
        method = getattr(self._workflow_stub(), method_name)
        try:
            return await method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    async def get_workflow(self, workflow_id: str, *, timeout: float | None = None) -> _workflow.WorkflowInfo:
        """Reads a workflow and every node's state; see `Client.get_workflow`."""
        response = await self._workflow_call(
            "GetWorkflow", workflow_service_pb2.GetWorkflowRequest(workflow_id=workflow_id), timeout)
        return _workflow.workflow_info(response.workflow)

    async def wait_workflow(self, workflow_id: str, timeout: float | None = None) -> _workflow.WorkflowInfo:
        """Waits until the workflow finishes; see `Client.wait_workflow`."""
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        last: _workflow.WorkflowInfo | None = None
        failures = 0
        stub = self._workflow_stub()
        while (remaining := deadline - time.monotonic()) > 0:
            call = stub.WaitWorkflow(_workflow.wait_request(workflow_id, remaining), timeout=remaining + STREAM_SLACK)
            try:
                async for response in call:
                    last, failures = _workflow.workflow_info(response.workflow), 0
                    if last.state.terminal:
                        return last
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                if isinstance(error, DeadlineExceededError) and last is not None:
                    break
                failures += 1
                if not isinstance(error, UnavailableError) or last is None or failures >= WAIT_RECONNECTS:
                    raise error from exc
                await asyncio.sleep(_convert.reconnect_delay(failures, deadline - time.monotonic()))
                continue
            finally:
                call.cancel()
            await asyncio.sleep(_convert.reconnect_delay(0, deadline - time.monotonic()))
        if last is None:
            last = await self.get_workflow(workflow_id)
            if last.state.terminal:
                return last
        raise _workflow.WorkflowTimeoutError(workflow_id, budget, last)

    async def cancel_workflow(self, workflow_id: str, reason: str = "", *,
                              timeout: float | None = None) -> _workflow.WorkflowState:
        """Cancels every unfinished node of a workflow; see `Client.cancel_workflow`."""
        response = await self._workflow_call(
            "CancelWorkflow", workflow_service_pb2.CancelWorkflowRequest(workflow_id=workflow_id, reason=reason),
            timeout)
        return _workflow.WorkflowState(response.state)

    # Schedules (AdminService).

    async def put_schedule(self, schedule_id: str, task: TaskDefinition[Any, Any] | Signature | str, *,
                           cron: str | None = None, every: float | timedelta | None = None, timezone: str = "",
                           missed: MissedTicks | str = MissedTicks.FIRE_ONCE, description: str = "",
                           timeout: float | None = None) -> ScheduleInfo:
        """Creates or replaces a schedule; see `Client.put_schedule`.

        Args:
            schedule_id: The schedule's id.
            task: A signature, a task definition (no arguments) or a bare task name.
            cron: A cron expression. Exclusive with ``every``.
            every: A fixed interval, as a timedelta or seconds.
            timezone: IANA zone the cron expression is read in; empty means UTC.
            missed: ``"fire-once"`` (default), ``"skip"`` or ``"catch-up"``.
            description: Free text.
            timeout: Deadline of the call, in seconds; default the client's.

        Returns:
            The schedule as stored, with its next tick.
        """
        trigger = Trigger.of(cron=cron, every=every, timezone=timezone, missed=missed, description=description)
        response: admin_service_pb2.PutScheduleResponse = await self._call(
            "PutSchedule", _schedules.put_request(schedule_id, task, trigger), timeout, admin=True)
        return _schedules.schedule_info(response.schedule)

    async def get_schedule(self, schedule_id: str, *, timeout: float | None = None) -> ScheduleInfo:
        """Reads one schedule; see `Client.get_schedule`."""
        response: admin_service_pb2.GetScheduleResponse = await self._call(
            "GetSchedule", admin_service_pb2.GetScheduleRequest(id=schedule_id), timeout, admin=True)
        return _schedules.schedule_info(response.schedule)

    async def list_schedules(self, page_size: int = 100, *,
                             timeout: float | None = None) -> AsyncIterator[ScheduleInfo]:
        """Lists every schedule by id; see `Client.list_schedules`."""
        request = admin_service_pb2.ListSchedulesRequest(page_size=page_size)
        while True:
            response: admin_service_pb2.ListSchedulesResponse = await self._call(
                "ListSchedules", request, timeout, admin=True)
            for message in response.schedules:
                yield _schedules.schedule_info(message)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    async def pause_schedule(self, schedule_id: str, *, timeout: float | None = None) -> ScheduleInfo:
        """Pauses a schedule; see `Client.pause_schedule`."""
        response: admin_service_pb2.PauseScheduleResponse = await self._call(
            "PauseSchedule", admin_service_pb2.PauseScheduleRequest(id=schedule_id), timeout, admin=True)
        return _schedules.schedule_info(response.schedule)

    async def resume_schedule(self, schedule_id: str, *, timeout: float | None = None) -> ScheduleInfo:
        """Resumes a schedule; see `Client.resume_schedule`."""
        response: admin_service_pb2.ResumeScheduleResponse = await self._call(
            "ResumeSchedule", admin_service_pb2.ResumeScheduleRequest(id=schedule_id), timeout, admin=True)
        return _schedules.schedule_info(response.schedule)

    async def delete_schedule(self, schedule_id: str, *, timeout: float | None = None) -> None:
        """Deletes a schedule; see `Client.delete_schedule`."""
        await self._call("DeleteSchedule", admin_service_pb2.DeleteScheduleRequest(id=schedule_id), timeout,
                         admin=True)

    async def close(self, grace: float | None = None) -> None:
        """Closes the channel.

        Args:
            grace: Seconds calls in flight get to finish; None cancels them at once.
        """
        await self._sessions.close()
        if self._channel is not None:
            await self._channel.close(grace)
            self._channel = self._stub_instance = self._admin_stub = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncClient {self.target}>"

"""The synchronous client and the handle it returns for each submitted task."""

from __future__ import annotations

import builtins
import functools
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
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
from client_sdk._session import SyncSessionCalls
from client_sdk._task import Signature, TaskDefinition, TaskOptions, _SubmitOverrides

__all__ = ["Client", "TaskHandle"]

P = ParamSpec("P")
_TaskSpec: TypeAlias = task_service_pb2.TaskSpec
R = TypeVar("R")

DEFAULT_TARGET = "localhost:50051"
DEFAULT_TIMEOUT = 10.0
# Extra time a WaitTask call's deadline gives the broker to end the stream itself.
STREAM_SLACK = 1.0
WAIT_RECONNECTS = _convert.WAIT_RECONNECTS
# Attempts of a submit that carries an idempotency key when the broker answers UNAVAILABLE.
SUBMIT_ATTEMPTS = 6


class TaskHandle:
    """A submitted task: its id plus the client that submitted it.

    Attributes:
        id: The task id, ``"<ulid>@<queue>"``.
        client: The client used for every call on this handle.
        duplicate: True when the submit matched an idempotency or unique key: nothing was
            stored and ``id`` is the existing task's.
    """

    __slots__ = ("client", "duplicate", "id")

    def __init__(self, task_id: str, client: Client, duplicate: bool = False) -> None:
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

    def get(self) -> TaskInfo:
        """Reads the task; see `Client.get`."""
        return self.client.get(self.id)

    def wait(self, timeout: float | None = None) -> TaskInfo:
        """Waits until the task finishes; see `Client.wait`."""
        return self.client.wait(self.id, timeout)

    def result(self, timeout: float | None = None) -> Any:
        """Waits for the task and returns its result; see `Client.result`."""
        return self.client.result(self.id, timeout)

    def cancel(self, reason: str = "") -> TaskState:
        """Cancels the task; see `Client.cancel`."""
        return self.client.cancel(self.id, reason)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id}>"


def _aio_channel(target: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]) -> Any:
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options)


class Client:
    """A synchronous Conveyor client over one gRPC channel; safe to share between threads.

    Every call has a deadline: the client's ``timeout`` unless the call is given its own.
    Reads (get, wait, list) are retried on UNAVAILABLE; submissions are not, since a retry
    after a lost answer would submit twice, unless they carry an idempotency key (which makes
    the retry answer the first task).

    Example:
        >>> with Client("localhost:50051") as client:
        ...     handle = client.enqueue(add, 1, 2)
        ...     handle.result(timeout=30)
        3
    """

    def __init__(self, target: str = DEFAULT_TARGET, *, timeout: float = DEFAULT_TIMEOUT,
                 credentials: grpc.ChannelCredentials | None = None,
                 options: Sequence[tuple[str, Any]] = ()) -> None:
        """Opens a channel (connecting lazily, on the first call).

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
        opts = channel_options(options)
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=opts)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=opts)
        self._stub = task_service_pb2_grpc.TaskServiceStub(self._channel)
        self._admin = admin_service_pb2_grpc.AdminServiceStub(self._channel)
        self._workflows = workflow_service_pb2_grpc.WorkflowServiceStub(self._channel)
        # Submits and waits travel on one session stream, on a grpc.aio channel of its own (see
        # SyncSessionCalls); on a broker without sessions, as unary RPCs.
        self._sessions = SyncSessionCalls(functools.partial(_aio_channel, target, credentials, opts), timeout)
        self._abandoned = weakref.finalize(self, self._sessions.abandon)
        self._abandoned.atexit = False
        self._batch_templates = True  # False once the broker showed it predates template batches

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    def _submit(self, spec: _TaskSpec, timeout: float | None) -> TaskHandle:
        """One submit, on the session (or EnqueueTask when the broker has no sessions). A task with
        an idempotency key is submitted again when the broker answers UNAVAILABLE (another replica
        may answer): the key makes the retry safe. Without a key a submit is never resent."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        attempt = 0
        while True:
            attempt += 1
            try:
                task_id, duplicate = self._sessions.submit(spec, max(0.001, deadline - time.monotonic()))
            except UnavailableError:
                left = deadline - time.monotonic()
                if not spec.idempotency_key or attempt >= SUBMIT_ATTEMPTS or left <= 0:
                    raise
                time.sleep(_convert.reconnect_delay(attempt, left))
                continue
            return TaskHandle(task_id, self, duplicate)

    def handle(self, task_id: str) -> TaskHandle:
        """A handle of an existing task, by id (no call is made)."""
        return TaskHandle(task_id, self)

    @overload
    def enqueue(self, task: TaskDefinition[P, R], /, *args: P.args, **kwargs: P.kwargs) -> TaskHandle: ...

    @overload
    def enqueue(self, task: Signature | str, /, *args: Any, **kwargs: Any) -> TaskHandle: ...

    def enqueue(self, task: TaskDefinition[Any, Any] | Signature | str, /, *args: Any,
                **kwargs: Any) -> TaskHandle:
        """Submits one task with its arguments encoded as JSON.

        Args:
            task: A task definition (arguments are checked against its function), a signature
                (which holds its arguments already) or a bare task name (queue "default").
            *args: Positional arguments of the task.
            **kwargs: Keyword arguments of the task.

        Returns:
            A handle of the new task (``duplicate`` set when an idempotency or unique key
            matched an existing task, whose id it then holds).

        Raises:
            TypeError: If the arguments do not fit the function or are not JSON-serialisable.
            InvalidArgumentError: If the broker refused a field.
            UnavailableError: If the broker or its store could not be reached.
        """
        return self._submit(_convert.signature_spec(_convert.to_signature(task, args, kwargs)), None)

    def enqueue_many(self, signatures: Iterable[Signature], *,
                     timeout: float | None = None) -> builtins.list[TaskHandle]:
        """Submits many tasks with BatchEnqueueTasks, in chunks of at most 10,000.

        Each chunk is all or nothing; chunks already submitted stay submitted if a later one
        fails. Every argument is encoded before the first chunk is sent.

        Args:
            signatures: The tasks.
            timeout: Deadline of each chunk's call, in seconds; default the client's.

        Returns:
            Handles of the new tasks, in the order given.

        Raises:
            TypeError: If some arguments are not JSON-serialisable (nothing is submitted).
            InvalidArgumentError: If the broker refused a task; ``field`` names it as
                ``tasks[i].<field>``, ``i`` counted within the failing chunk.
            UnavailableError: If the broker or its store could not be reached.
        """
        handles: builtins.list[TaskHandle] = []
        for request in _convert.batch_requests(signatures, templates=self._batch_templates):
            try:
                response: task_service_pb2.BatchEnqueueTasksResponse = self._call(
                    self._stub.BatchEnqueueTasks, request, timeout)
            except InvalidArgumentError as exc:
                if not _convert.needs_spelling_out(exc, request):
                    _convert.name_batch_field(exc, request)
                    raise
                response = self._call(self._stub.BatchEnqueueTasks, _convert.spelled_out(request), timeout)
                self._batch_templates = False  # a broker older than templates: it took the spelled-out form
            duplicates = list(response.duplicates) or [False] * len(response.task_ids)
            handles.extend(TaskHandle(task_id, self, duplicate)
                           for task_id, duplicate in zip(response.task_ids, duplicates, strict=True))
        return handles

    def submit(self, queue: str, name: str, payload: bytes, *,
               content_type: str = _convert.JSON_CONTENT_TYPE, rpc_timeout: float | None = None,
               **options: Unpack[_SubmitOverrides]) -> TaskHandle:
        """Submits a task with a payload the caller encoded (any bytes, any content type).

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

        Raises:
            InvalidArgumentError: If the broker refused a field.
            UnavailableError: If the broker or its store could not be reached.
        """
        spec = _convert.task_spec(name, bytes(payload), content_type, TaskOptions(queue=queue, **options))
        return self._submit(spec, rpc_timeout)

    def get(self, task_id: str, *, timeout: float | None = None) -> TaskInfo:
        """Reads one task.

        Args:
            task_id: The task id.
            timeout: Deadline of the call, in seconds; default the client's.

        Returns:
            The task as stored.

        Raises:
            NotFoundError: If the task is unknown or its record expired.
            InvalidArgumentError: If the id is malformed.
        """
        response: task_service_pb2.GetTaskResponse = self._call(
            self._stub.GetTask, task_service_pb2.GetTaskRequest(task_id=task_id), timeout)
        return _convert.task_info(response.task)

    def wait(self, task_id: str, timeout: float | None = None) -> TaskInfo:
        """Waits until the task reaches a terminal state, over the WaitTask stream.

        A broker replica going away mid-wait is survived: the stream is opened again for the
        time that is left.

        Args:
            task_id: The task id.
            timeout: Longest time to wait, in seconds; default the client's timeout.

        Returns:
            The task in its terminal state (SUCCEEDED, FAILED, CANCELLED or EXPIRED).

        Raises:
            TaskTimeoutError: If the task did not finish in time.
            NotFoundError: If the task is unknown.
            UnavailableError: If the broker could not be reached.
            DeadlineExceededError: If the broker did not answer at all in time.
        """
        budget = self.timeout if timeout is None else timeout
        if budget <= 0:
            return _convert.terminal_or_timeout(self.get(task_id), budget)
        deadline = time.monotonic() + budget
        waited = self._sessions.wait(task_id, budget, deadline) if self._sessions.enabled else None
        if waited is not None:
            return waited
        last: TaskInfo | None = None
        failures = 0
        while (remaining := deadline - time.monotonic()) > 0:
            call = self._stub.WaitTask(_convert.wait_request(task_id, remaining),
                                       timeout=remaining + STREAM_SLACK)
            try:
                for response in call:
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
                time.sleep(_convert.reconnect_delay(failures, deadline - time.monotonic()))
                continue
            finally:
                call.cancel()
            # The broker ended the stream at its own timeout: go on for what is left.
            time.sleep(_convert.reconnect_delay(0, deadline - time.monotonic()))
        raise TaskTimeoutError(task_id, budget, last)

    def call(self, task: TaskDefinition[Any, Any] | Signature | str, *, timeout: float | None = None) -> Any:
        """Submits a task and returns its result: one round trip on the client's session stream
        (a submit, then `result`, on a broker without sessions).

        ``client.call(add.s(1, 2), timeout=10)`` is ``client.enqueue(add, 1, 2).result(10)`` with
        one message each way instead of two calls. A submit that was sent is never sent again.

        Args:
            task: A signature (arguments and options included), a task definition taking no
                arguments, or a bare task name.
            timeout: Longest time for the submit and the wait together; default the client's.

        Returns:
            The decoded JSON result, or the raw bytes when its content type is not JSON.

        Raises:
            TaskFailedError, TaskCancelledError, TaskExpiredError, TaskTimeoutError: As `result`.
            InvalidArgumentError: If the broker refused a field of the task.
        """
        budget = self.timeout if timeout is None else timeout
        spec = _convert.signature_spec(_convert.to_signature(task, (), {}))
        started = time.monotonic()
        answer = self._sessions.submit_and_wait(spec, budget) if self._sessions.enabled else None
        if answer is None:
            handle = self._submit(spec, budget)
            return handle.result(max(0.0, budget - (time.monotonic() - started)))
        return _convert.call_outcome(answer, budget)

    def result(self, task_id: str, timeout: float | None = None) -> Any:
        """Waits for the task and returns its result.

        Args:
            task_id: The task id.
            timeout: Longest time to wait, in seconds; default the client's timeout.

        Returns:
            The decoded JSON result, or the raw bytes when its content type is not JSON.

        Raises:
            TaskFailedError: If the task failed (``error`` holds what the worker reported).
            TaskCancelledError: If the task was cancelled.
            TaskExpiredError: If the task expired before it started.
            TaskTimeoutError: If the task did not finish in time.
        """
        return _convert.outcome(self.wait(task_id, timeout))

    def cancel(self, task_id: str, reason: str = "", *, timeout: float | None = None) -> TaskState:
        """Cancels a task.

        Args:
            task_id: The task id.
            reason: Free text stored with the task.
            timeout: Deadline of the call, in seconds; default the client's.

        Returns:
            CANCELLED, or RUNNING while the worker running it is told to stop.

        Raises:
            FailedPreconditionError: If the task already finished.
            NotFoundError: If the task is unknown.
        """
        response: task_service_pb2.CancelTaskResponse = self._call(
            self._stub.CancelTask, task_service_pb2.CancelTaskRequest(task_id=task_id, reason=reason),
            timeout)
        return TaskState.parse(response.state)

    def list(self, queue: str, state: TaskState | str, page_size: int = 100, *,
             timeout: float | None = None) -> Iterator[TaskInfo]:
        """Lists a queue's tasks in one state, oldest first, fetching pages as it goes.

        Payloads and results are left out.

        Args:
            queue: The queue.
            state: The state, as a `TaskState` or its name (``"queued"``).
            page_size: Tasks per call, 1 to 1000.
            timeout: Deadline of each page's call, in seconds; default the client's.

        Yields:
            The tasks.

        Raises:
            InvalidArgumentError: If the queue or state is not accepted.
        """
        request = task_service_pb2.ListTasksRequest(queue=queue, state=TaskState.parse(state),
                                                    page_size=page_size)
        while True:
            response: task_service_pb2.ListTasksResponse = self._call(self._stub.ListTasks, request, timeout)
            for message in response.tasks:
                yield _convert.task_info(message)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    # Queues and their limits.

    def set_queue_limits(self, queue: str, *, max_running: int = 0, rate_per_second: float = 0.0,
                         rate_burst: int = 0, timeout: float | None = None) -> QueueInfo:
        """Replaces a queue's limits; every broker replica applies them at once.

        Args:
            queue: The queue.
            max_running: Most tasks of the queue running at once; 0 for no limit.
            rate_per_second: Most tasks started per second; 0 for no limit.
            rate_burst: Tasks that may start at once after a quiet spell; 0 for
                ``max(1, rate_per_second)``.
            timeout: Deadline of the call, in seconds; default the client's.

        Returns:
            The queue with its new limits.

        Raises:
            ValueError: If a limit is negative.
            InvalidArgumentError: If the broker refused the queue name or a limit.
        """
        limits = QueueLimits(max_running=max_running, rate_per_second=rate_per_second, rate_burst=rate_burst)
        response: admin_service_pb2.SetQueueLimitsResponse = self._call(
            self._admin.SetQueueLimits, _queues.limits_request(queue, limits), timeout)
        return _queues.queue_info(response.queue)

    def get_queue(self, queue: str, *, timeout: float | None = None) -> QueueInfo:
        """Reads a queue: its limits and how many tasks it holds in each state.

        Args:
            queue: The queue (one never submitted to answers zero counts).
            timeout: Deadline of the call, in seconds; default the client's.

        Returns:
            The queue.
        """
        response: admin_service_pb2.GetQueueResponse = self._call(
            self._admin.GetQueue, admin_service_pb2.GetQueueRequest(queue=queue), timeout)
        return _queues.queue_info(response.queue)

    def list_queues(self, *, timeout: float | None = None) -> builtins.list[QueueInfo]:
        """Every queue ever submitted to (or given limits), by name.

        Args:
            timeout: Deadline of the call, in seconds; default the client's.

        Returns:
            The queues.
        """
        response: admin_service_pb2.ListQueuesResponse = self._call(
            self._admin.ListQueues, admin_service_pb2.ListQueuesRequest(), timeout)
        return [_queues.queue_info(q) for q in response.queues]

    # Schedules (AdminService).

    def put_schedule(self, schedule_id: str, task: TaskDefinition[Any, Any] | Signature | str, *,
                     cron: str | None = None, every: float | timedelta | None = None, timezone: str = "",
                     missed: MissedTicks | str = MissedTicks.FIRE_ONCE, description: str = "",
                     timeout: float | None = None) -> ScheduleInfo:
        """Creates a schedule, or replaces the one with the same id (keeping its paused state and,
        when the trigger is unchanged, its next tick).

        Each tick submits the task with an idempotency key ``schedule:<id>:<tick ms>``, exactly once
        however many broker replicas run.

        Args:
            schedule_id: 1 to 128 of letters, digits, ``_ - . :``.
            task: A signature (``add.s(1, 2)``, arguments and options included), a task definition
                (no arguments) or a bare task name (queue "default").
            cron: A cron expression: five fields, or six with seconds last. Exclusive with ``every``.
            every: A fixed interval, as a timedelta or seconds (1 s to 366 days).
            timezone: IANA zone the cron expression is read in; empty means UTC.
            missed: What to do with missed ticks: ``"fire-once"`` (default), ``"skip"`` or ``"catch-up"``.
            description: Free text, at most 1024 characters.
            timeout: Deadline of the call, in seconds; default the client's.

        Returns:
            The schedule as stored, with its next tick.

        Raises:
            ValueError: If not exactly one of ``cron`` and ``every`` is given.
            InvalidArgumentError: If the broker refused a field (``schedule.cron``, ``schedule.time_zone``...).
        """
        trigger = Trigger.of(cron=cron, every=every, timezone=timezone, missed=missed, description=description)
        response: admin_service_pb2.PutScheduleResponse = self._call(
            self._admin.PutSchedule, _schedules.put_request(schedule_id, task, trigger), timeout)
        return _schedules.schedule_info(response.schedule)

    def get_schedule(self, schedule_id: str, *, timeout: float | None = None) -> ScheduleInfo:
        """Reads one schedule.

        Raises:
            NotFoundError: If there is no such schedule.
        """
        response: admin_service_pb2.GetScheduleResponse = self._call(
            self._admin.GetSchedule, admin_service_pb2.GetScheduleRequest(id=schedule_id), timeout)
        return _schedules.schedule_info(response.schedule)

    def list_schedules(self, page_size: int = 100, *, timeout: float | None = None) -> Iterator[ScheduleInfo]:
        """Lists every schedule by id, fetching pages as it goes.

        Args:
            page_size: Schedules per call, 1 to 1000.
            timeout: Deadline of each page's call, in seconds; default the client's.

        Yields:
            The schedules, each with its next tick.
        """
        request = admin_service_pb2.ListSchedulesRequest(page_size=page_size)
        while True:
            response: admin_service_pb2.ListSchedulesResponse = self._call(
                self._admin.ListSchedules, request, timeout)
            for message in response.schedules:
                yield _schedules.schedule_info(message)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    def pause_schedule(self, schedule_id: str, *, timeout: float | None = None) -> ScheduleInfo:
        """Stops a schedule from firing until it is resumed (pausing twice changes nothing).

        Raises:
            NotFoundError: If there is no such schedule.
        """
        response: admin_service_pb2.PauseScheduleResponse = self._call(
            self._admin.PauseSchedule, admin_service_pb2.PauseScheduleRequest(id=schedule_id), timeout)
        return _schedules.schedule_info(response.schedule)

    def resume_schedule(self, schedule_id: str, *, timeout: float | None = None) -> ScheduleInfo:
        """Lets a paused schedule fire again; the ticks it missed follow its missed-tick policy.

        Raises:
            NotFoundError: If there is no such schedule.
        """
        response: admin_service_pb2.ResumeScheduleResponse = self._call(
            self._admin.ResumeSchedule, admin_service_pb2.ResumeScheduleRequest(id=schedule_id), timeout)
        return _schedules.schedule_info(response.schedule)

    def delete_schedule(self, schedule_id: str, *, timeout: float | None = None) -> None:
        """Deletes a schedule; the tasks it submitted are left alone.

        Raises:
            NotFoundError: If there is no such schedule.
        """
        self._call(self._admin.DeleteSchedule, admin_service_pb2.DeleteScheduleRequest(id=schedule_id),
                   timeout)
    # Workflows.

    def submit_workflow(self, flow: _workflow.Flow, *, name: str = "", idempotency_key: str = "",
                        idempotency_ttl: float | None = None,
                        timeout: float | None = None) -> _workflow.WorkflowHandle:
        """Submits a workflow in one call: a chain, group, chord, DAG or a single signature.

        Args:
            flow: What to run, e.g. ``chain(fetch.s(url), parse.s(), store.s())``.
            name: Optional label.
            idempotency_key: A repeated submit with this key answers the first workflow.
            idempotency_ttl: How long the key is remembered, in seconds; default 1 day.
            timeout: Deadline of the call, in seconds; default the client's.

        Returns:
            The handle: ``id``, ``task_ids``, ``get()``, ``wait()``, ``result()``, ``cancel()``.

        Raises:
            InvalidArgumentError: If the broker refused it (a cycle, an unknown parent, too many
                nodes, a bad task field as ``nodes[i].task.field``); nothing was stored.
        """
        request, shape = _workflow.submit_request(flow, name=name, idempotency_key=idempotency_key,
                                                  idempotency_ttl=idempotency_ttl)
        response: workflow_service_pb2.SubmitWorkflowResponse = self._call(
            self._workflows.SubmitWorkflow, request, timeout)
        return _workflow.WorkflowHandle(response.workflow_id, self, task_ids=dict(response.task_ids), shape=shape,
                                        duplicate=response.duplicate)

    def workflow(self, workflow_id: str) -> _workflow.WorkflowHandle:
        """A handle of an existing workflow, by id (no call is made); its ``result()`` is a dict
        of the output nodes' results."""
        return _workflow.WorkflowHandle(workflow_id, self)

    def get_workflow(self, workflow_id: str, *, timeout: float | None = None) -> _workflow.WorkflowInfo:
        """Reads a workflow and every node's state.

        Raises:
            NotFoundError: If the workflow is unknown or its record expired.
        """
        response: workflow_service_pb2.GetWorkflowResponse = self._call(
            self._workflows.GetWorkflow, workflow_service_pb2.GetWorkflowRequest(workflow_id=workflow_id), timeout)
        return _workflow.workflow_info(response.workflow)

    def wait_workflow(self, workflow_id: str, timeout: float | None = None) -> _workflow.WorkflowInfo:
        """Waits until the workflow finishes, over the WaitWorkflow stream.

        Args:
            workflow_id: The workflow id.
            timeout: Longest time to wait, in seconds; default the client's timeout.

        Returns:
            The workflow in its final state.

        Raises:
            WorkflowTimeoutError: If it did not finish in time.
            NotFoundError: If the workflow is unknown.
        """
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        last: _workflow.WorkflowInfo | None = None
        failures = 0
        while (remaining := deadline - time.monotonic()) > 0:
            call = self._workflows.WaitWorkflow(_workflow.wait_request(workflow_id, remaining),
                                                timeout=remaining + STREAM_SLACK)
            try:
                for response in call:
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
                time.sleep(_convert.reconnect_delay(failures, deadline - time.monotonic()))
                continue
            finally:
                call.cancel()
            time.sleep(_convert.reconnect_delay(0, deadline - time.monotonic()))
        if last is None:
            last = self.get_workflow(workflow_id)
            if last.state.terminal:
                return last
        raise _workflow.WorkflowTimeoutError(workflow_id, budget, last)

    def cancel_workflow(self, workflow_id: str, reason: str = "", *,
                        timeout: float | None = None) -> _workflow.WorkflowState:
        """Cancels every unfinished node of a workflow (running ones are asked to stop).

        Returns:
            CANCELLED.

        Raises:
            FailedPreconditionError: If the workflow already finished.
            NotFoundError: If the workflow is unknown.
        """
        response: workflow_service_pb2.CancelWorkflowResponse = self._call(
            self._workflows.CancelWorkflow,
            workflow_service_pb2.CancelWorkflowRequest(workflow_id=workflow_id, reason=reason), timeout)
        return _workflow.WorkflowState(response.state)

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._abandoned.detach()
        self._sessions.close()
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self.target}>"


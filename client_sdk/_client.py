"""The synchronous client and the handle it returns for each submitted task."""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, Unpack, overload

import grpc
from conveyor.v1 import task_service_pb2, task_service_pb2_grpc

from client_sdk import _convert
from client_sdk._channel import channel_options
from client_sdk._errors import (
    DeadlineExceededError,
    TaskTimeoutError,
    UnavailableError,
    from_rpc_error,
)
from client_sdk._models import TaskInfo, TaskState
from client_sdk._session import SyncSessionCalls
from client_sdk._task import Signature, TaskDefinition, TaskOptions, _SubmitOverrides

__all__ = ["Client", "TaskHandle"]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_TARGET = "localhost:50051"
DEFAULT_TIMEOUT = 10.0
# Extra time a WaitTask call's deadline gives the broker to end the stream itself.
STREAM_SLACK = 1.0
# Consecutive UNAVAILABLE answers a wait survives (a broker replica going away) before giving up.
WAIT_RECONNECTS = 5


class TaskHandle:
    """A submitted task: its id plus the client that submitted it.

    Attributes:
        id: The task id, ``"<ulid>@<queue>"``.
        client: The client used for every call on this handle.
    """

    __slots__ = ("client", "id")

    def __init__(self, task_id: str, client: Client) -> None:
        """Wraps a task id.

        Args:
            task_id: The task id.
            client: The client to call the broker with.
        """
        self.id = task_id
        self.client = client

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


class Client:
    """A synchronous Conveyor client over one gRPC channel; safe to share between threads.

    Every call has a deadline: the client's ``timeout`` unless the call is given its own.
    Reads (get, wait, list) are retried on UNAVAILABLE; submissions are not, since a retry
    after a lost answer would submit twice.

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
        # Submits and waits travel on one session stream (unary RPCs on a broker without sessions).
        self._sessions = SyncSessionCalls(self._stub, timeout)

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

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
            A handle of the new task.

        Raises:
            TypeError: If the arguments do not fit the function or are not JSON-serialisable.
            InvalidArgumentError: If the broker refused a field.
            UnavailableError: If the broker or its store could not be reached.
        """
        spec = _convert.signature_spec(_convert.to_signature(task, args, kwargs))
        return TaskHandle(self._sessions.submit(spec, None), self)

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
        for request in _convert.batch_requests(signatures):
            response: task_service_pb2.BatchEnqueueTasksResponse = self._call(
                self._stub.BatchEnqueueTasks, request, timeout)
            handles.extend(TaskHandle(task_id, self) for task_id in response.task_ids)
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
        return TaskHandle(self._sessions.submit(spec, rpc_timeout), self)

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

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._sessions.close()
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self.target}>"


"""The asyncio client and the handle it returns for each submitted task."""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, Unpack, overload

import grpc
from conveyor.v1 import task_service_pb2, task_service_pb2_grpc

from client_sdk import _convert
from client_sdk._channel import channel_options
from client_sdk._client import DEFAULT_TARGET, DEFAULT_TIMEOUT, STREAM_SLACK, WAIT_RECONNECTS
from client_sdk._errors import DeadlineExceededError, TaskTimeoutError, UnavailableError, from_rpc_error
from client_sdk._models import TaskInfo, TaskState
from client_sdk._session import AsyncSessionCalls
from client_sdk._task import Signature, TaskDefinition, TaskOptions, _SubmitOverrides

__all__ = ["AsyncClient", "AsyncTaskHandle"]

P = ParamSpec("P")
R = TypeVar("R")


class AsyncTaskHandle:
    """A task submitted through an `AsyncClient`: its id plus that client.

    Attributes:
        id: The task id, ``"<ulid>@<queue>"``.
        client: The client used for every call on this handle.
    """

    __slots__ = ("client", "id")

    def __init__(self, task_id: str, client: AsyncClient) -> None:
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
        # Submits and waits travel on one session stream (unary RPCs on a broker without sessions).
        self._sessions = AsyncSessionCalls(lambda: self._stub, timeout)

    @property
    def _stub(self) -> Any:
        if self._stub_instance is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self.target, options=self._options)
            else:
                self._channel = grpc.aio.secure_channel(self.target, self._credentials, options=self._options)
            self._stub_instance = task_service_pb2_grpc.TaskServiceStub(self._channel)
        return self._stub_instance

    async def _call(self, method_name: str, request: Any, timeout: float | None) -> Any:
        method = getattr(self._stub, method_name)
        try:
            return await method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

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
        spec = _convert.signature_spec(_convert.to_signature(task, args, kwargs))
        return AsyncTaskHandle(await self._sessions.submit(spec, None), self)

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
        for request in _convert.batch_requests(signatures):
            response: task_service_pb2.BatchEnqueueTasksResponse = await self._call(
                "BatchEnqueueTasks", request, timeout)
            handles.extend(AsyncTaskHandle(task_id, self) for task_id in response.task_ids)
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
        return AsyncTaskHandle(await self._sessions.submit(spec, rpc_timeout), self)

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

    async def close(self, grace: float | None = None) -> None:
        """Closes the channel.

        Args:
            grace: Seconds calls in flight get to finish; None cancels them at once.
        """
        await self._sessions.close()
        if self._channel is not None:
            await self._channel.close(grace)
            self._channel = self._stub_instance = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncClient {self.target}>"

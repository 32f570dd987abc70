"""The client session: one OpenSession stream carrying the client's submits and result waits.

Calls made while a message is being written wait in a list and leave together in the next
message (no timer: a lone call is written at once), and the broker answers each on its own.
A broken stream fails the calls in flight with UnavailableError (a submit is never resent: it
may have been stored) and the next call opens a new session. A broker that answers
UNIMPLEMENTED (older, or sessions turned off) raises SessionsUnsupported: nothing was run, and
the client falls back to the unary RPCs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import grpc
from conveyor.v1 import task_pb2, task_service_pb2_grpc
from conveyor.v1 import task_service_pb2 as ts

from client_sdk import _convert, _loop
from client_sdk._errors import (
    ConveyorError,
    DeadlineExceededError,
    InvalidArgumentError,
    TaskTimeoutError,
    UnavailableError,
    from_rpc_error,
    from_status,
)
from client_sdk._models import TaskInfo

__all__ = ["AsyncSessionCalls", "SessionsUnsupported", "SyncSessionCalls"]

T = TypeVar("T")

# Extra time a wait's deadline gives the broker to answer it itself (as _client.STREAM_SLACK for WaitTask).
STREAM_SLACK = 1.0
WAIT_RECONNECTS = _convert.WAIT_RECONNECTS
# Most calls, and about the most bytes, in one message; more wait for the next one.
MAX_CALLS_PER_MESSAGE = 1000
MAX_MESSAGE_BYTES = _convert.MAX_BATCH_BYTES
# Longest wait the broker accepts in one call; longer waits are asked again.
MAX_WAIT_SECONDS = 86_400.0
# How long closing the sync client's session and its channel may take.
CLOSE_SECONDS = 10.0
# The SDK names fields as the unary RPCs do, whichever way a call travelled.
_FIELD_PREFIXES = (("submit.", "task."), ("submit_and_wait.task.", "task."), ("wait.task_id", "task_id"))


class SessionsUnsupported(Exception):
    """The broker does not serve client sessions; the call was not run."""


def submit_call(spec: ts.TaskSpec) -> ts.SessionCall:
    return ts.SessionCall(submit=spec)


def submit_and_wait_call(spec: ts.TaskSpec, seconds: float) -> ts.SessionCall:
    # Only the outcome is wanted: no `submitted` reply (a broker before 0.4 sends it anyway, and
    # `_final` passes over it).
    return ts.SessionCall(submit_and_wait=ts.SessionSubmitAndWait(
        task=spec, timeout=_convert.duration(min(max(0.0, seconds), MAX_WAIT_SECONDS)), skip_submitted=True))


def wait_call(task_id: str, seconds: float) -> ts.SessionCall:
    return ts.SessionCall(wait=ts.SessionWait(task_id=task_id, timeout=_convert.duration(max(0.0, seconds))))


def outcome(reply: ts.SessionReply) -> ts.SessionReply:
    """The reply, or the SDK error it carries."""
    if reply.WhichOneof("outcome") == "error":
        raise _unary_names(from_status(reply.error))
    return reply


def _unary_names(error: ConveyorError) -> ConveyorError:
    if not isinstance(error, InvalidArgumentError) or error.field is None:
        return error
    for prefix, unary in _FIELD_PREFIXES:
        if error.field.startswith(prefix):
            field = unary + error.field[len(prefix):]
            violations = tuple((unary + f[len(prefix):] if f.startswith(prefix) else f, d)
                               for f, d in error.violations)
            message = error.message.replace(error.field, field, 1)
            return InvalidArgumentError(message, field=field, violations=violations, code=error.code,
                                        reason=error.reason, metadata=error.metadata)
    return error


def _stream_error(exc: BaseException | None) -> Exception:
    """What the calls in flight raise when the stream ends."""
    if isinstance(exc, grpc.RpcError):
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            return SessionsUnsupported()
        error = from_rpc_error(exc)
        if isinstance(error, UnavailableError):
            return error
        return UnavailableError(f"session ended: {error.message}", code=error.code, reason=error.reason)
    return UnavailableError("session ended")


def _take(pending: list[ts.SessionCall]) -> list[ts.SessionCall]:
    """Removes and returns the calls of the next message: at least one, within the limits."""
    count, size = 1, pending[0].ByteSize()
    while count < min(len(pending), MAX_CALLS_PER_MESSAGE):
        size += pending[count].ByteSize() + 8
        if size > MAX_MESSAGE_BYTES:
            break
        count += 1
    calls = pending[:count]
    del pending[:count]
    return calls


def _final(reply: ts.SessionReply, two_replies: set[int]) -> bool:
    """False for the `submitted` reply of a submit_and_wait call: its caller waits for the task."""
    return reply.call_id not in two_replies or reply.WhichOneof("outcome") != "submitted"


def _deadline_error(timeout: float) -> DeadlineExceededError:
    return DeadlineExceededError(f"no answer within {timeout:g}s", code="DEADLINE_EXCEEDED")


class AsyncSession:
    """A session on a grpc.aio channel; use it from the event loop that opened it."""

    def __init__(self, stub: Any) -> None:
        self._call = stub.OpenSession()
        self._pending: list[ts.SessionCall] = []
        self._waiting: dict[int, asyncio.Future[ts.SessionReply]] = {}
        self._two_replies: set[int] = set()  # submit_and_wait calls: answered `submitted`, then `task`
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()
        self.error: Exception | None = None
        self._writer = asyncio.create_task(self._write(), name="conveyor-session-write")
        self._reader = asyncio.create_task(self._read(), name="conveyor-session-read")

    async def call(self, call: ts.SessionCall, timeout: float) -> ts.SessionReply:
        """Sends one call and returns its reply (raising the SDK error it carries)."""
        if self.error is not None:
            raise self.error
        call.call_id = call_id = next(self._ids)
        future: asyncio.Future[ts.SessionReply] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = future
        if call.WhichOneof("kind") == "submit_and_wait":
            self._two_replies.add(call_id)
        self._pending.append(call)
        self._wake.set()
        try:
            async with asyncio.timeout(timeout):
                return outcome(await future)
        except TimeoutError:
            raise _deadline_error(timeout) from None
        finally:
            self._waiting.pop(call_id, None)
            self._two_replies.discard(call_id)

    async def _write(self) -> None:
        try:
            # A write racing the broker's refusal would turn UNIMPLEMENTED into INTERNAL: wait for
            # the broker to accept the session (its headers) or end it before the first write.
            await self._call.initial_metadata()
            while self.error is None and not self._call.done():
                await self._wake.wait()
                self._wake.clear()
                while self._pending and self.error is None:
                    await self._call.write(ts.SessionRequest(calls=_take(self._pending)))
        except (grpc.RpcError, asyncio.InvalidStateError):
            return  # the call is over: the reader fails the calls with its status (UNIMPLEMENTED...)

    async def _read(self) -> None:
        failure: BaseException | None = None
        try:
            while (response := await self._call.read()) is not grpc.aio.EOF:
                for reply in response.replies:
                    future = self._waiting.get(reply.call_id)
                    if future is not None and not future.done() and _final(reply, self._two_replies):
                        future.set_result(reply)
        except grpc.RpcError as exc:
            failure = exc
        self._fail(failure)

    def _fail(self, exc: BaseException | None) -> None:
        if self.error is None:
            self.error = _stream_error(exc)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(self.error)
        self._pending.clear()
        self._wake.set()

    async def close(self) -> None:
        """Cancels the stream; calls in flight raise UnavailableError."""
        self._call.cancel()
        self._fail(UnavailableError("client closed"))
        for task in (self._writer, self._reader):
            task.cancel()
        await asyncio.gather(self._writer, self._reader, return_exceptions=True)


class SyncSessionCalls:
    """The sync client's submits and waits: `AsyncSessionCalls` on a grpc.aio channel of their
    own, run by the calling threads on the process's `CallerLoop`. Safe to share between threads."""

    def __init__(self, open_channel: Callable[[], Any], timeout: float) -> None:
        self._open_channel = open_channel
        self._stub: Any = None
        self._channel: Any = None
        self._loop = _loop.shared()
        self._calls = AsyncSessionCalls(self._session_stub, timeout)
        self._timeout = timeout
        self._closed = False

    @property
    def enabled(self) -> bool:
        """False once the broker answered UNIMPLEMENTED to OpenSession."""
        return self._calls.enabled

    def _session_stub(self) -> Any:
        if self._stub is None:  # in the loop, on the first call: grpc.aio channels open inside it
            self._channel = self._open_channel()
            self._stub = task_service_pb2_grpc.TaskServiceStub(self._channel)
        return self._stub

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        if self._closed:
            coro.close()
            raise UnavailableError("client closed")
        try:
            return self._loop.run(coro, timeout)
        except TimeoutError:
            raise _deadline_error(timeout) from None

    def submit(self, spec: ts.TaskSpec, timeout: float | None) -> tuple[str, bool]:
        """`AsyncSessionCalls.submit`, from a sync caller."""
        budget = self._timeout if timeout is None else timeout
        return self._run(self._calls.submit(spec, budget), budget)

    def submit_and_wait(self, spec: ts.TaskSpec, seconds: float) -> task_pb2.Task | None:
        """`AsyncSessionCalls.submit_and_wait`, from a sync caller."""
        return self._run(self._calls.submit_and_wait(spec, seconds), seconds + STREAM_SLACK)

    def wait(self, task_id: str, budget: float, deadline: float) -> TaskInfo | None:
        """`AsyncSessionCalls.wait`, from a sync caller."""
        return self._run(self._calls.wait(task_id, budget, deadline),
                         max(0.0, deadline - time.monotonic()) + STREAM_SLACK)

    def close(self) -> None:
        """Ends the session (calls in flight raise UnavailableError) and closes the channel."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(TimeoutError):
            self._loop.run(self._close(), CLOSE_SECONDS)

    def abandon(self) -> None:
        """`close` on a thread of its own, for a client dropped unclosed: the session's tasks
        would otherwise keep its stream and channel open for as long as the process lives."""
        if not self._closed:
            threading.Thread(target=self.close, name="conveyor-close", daemon=True).start()

    async def _close(self) -> None:
        await self._calls.close()
        if self._channel is not None:
            await self._channel.close()


class AsyncSessionCalls:
    """The asyncio client's submits and waits: over its session, or over the unary RPCs when the
    broker has none. `stub` opens the client's channel (lazily, inside the running loop)."""

    def __init__(self, stub: Callable[[], Any], timeout: float) -> None:
        self._stub = stub
        self._timeout = timeout
        self._session: AsyncSession | None = None
        self._closes = 0  # a wait in flight when the client closes gives up (the client may open again)
        self.enabled = True  # False once the broker answered UNIMPLEMENTED to OpenSession

    async def _call(self, call: ts.SessionCall, timeout: float) -> ts.SessionReply | None:
        """The call's reply; None when the broker has no sessions (the call was not run)."""
        if not self.enabled:
            return None
        if self._session is None or self._session.error is not None:
            self._session = AsyncSession(self._stub())
        try:
            return await self._session.call(call, timeout)
        except SessionsUnsupported:
            self.enabled = False
            return None

    async def submit(self, spec: ts.TaskSpec, timeout: float | None) -> tuple[str, bool]:
        """Submits one task: its id, and whether a key matched an existing task. Never resent."""
        budget = self._timeout if timeout is None else timeout
        reply = await self._call(submit_call(spec), budget)
        if reply is not None:
            return reply.submitted.task_id, reply.submitted.duplicate
        try:
            response = await self._stub().EnqueueTask(ts.EnqueueTaskRequest(task=spec), timeout=budget)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return response.task_id, response.duplicate

    async def submit_and_wait(self, spec: ts.TaskSpec, seconds: float) -> task_pb2.Task | None:
        """Submits one task and waits up to `seconds` for it, in one call; the task as it stands
        then (terminal or not, see `_convert.call_outcome`). None when the broker has no sessions
        (nothing was submitted)."""
        reply = await self._call(submit_and_wait_call(spec, seconds), seconds + STREAM_SLACK)
        return None if reply is None else reply.task

    async def wait(self, task_id: str, budget: float, deadline: float) -> TaskInfo | None:
        """`AsyncClient.wait` over the session, asked again on a new one if it breaks; None: no sessions."""
        last: TaskInfo | None = None
        failures = 0
        closes = self._closes
        while (remaining := deadline - time.monotonic()) > 0:
            seconds = min(remaining, MAX_WAIT_SECONDS)
            try:
                reply = await self._call(wait_call(task_id, seconds), seconds + STREAM_SLACK)
            except UnavailableError:
                failures += 1
                if failures >= WAIT_RECONNECTS or self._closes != closes:
                    raise
                await asyncio.sleep(_convert.reconnect_delay(failures, deadline - time.monotonic()))
                continue
            except DeadlineExceededError:
                if last is None:
                    raise
                break
            if reply is None:
                return None
            last, failures = _convert.task_info(reply.task), 0
            if last.terminal:
                return last
        raise TaskTimeoutError(task_id, budget, last)

    async def close(self) -> None:
        self._closes += 1
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

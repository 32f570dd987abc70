"""The client session's coalescing and failure handling, against an in-memory stream (no sockets)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from conveyor.v1 import task_pb2
from conveyor.v1 import task_service_pb2 as ts
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from client_sdk._errors import DeadlineExceededError, InvalidArgumentError, NotFoundError, UnavailableError
from client_sdk._session import (
    AsyncSession,
    SessionsUnsupported,
    _take,
    outcome,
    submit_and_wait_call,
    submit_call,
)


class StreamError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._code.name


class FakeStream:
    """A bidi call: records written messages; each write waits for `gate`; replies are fed by the test."""

    def __init__(self) -> None:
        self.written: list[ts.SessionRequest] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.replies: asyncio.Queue[ts.SessionResponse | BaseException] = asyncio.Queue()

    async def initial_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def done(self) -> bool:
        return False

    async def write(self, message: ts.SessionRequest) -> None:
        self.written.append(message)
        await self.gate.wait()

    async def read(self) -> Any:
        item = await self.replies.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        self.replies.put_nowait(StreamError(grpc.StatusCode.CANCELLED))

    def answer(self, message: ts.SessionRequest) -> None:
        self.replies.put_nowait(ts.SessionResponse(replies=[
            ts.SessionReply(call_id=c.call_id, submitted=ts.EnqueueTaskResponse(task_id=f"t{c.call_id}@q"))
            for c in message.calls]))


class FakeStub:
    def __init__(self) -> None:
        self.stream = FakeStream()

    def OpenSession(self) -> FakeStream:
        return self.stream


def _spec() -> ts.TaskSpec:
    return ts.TaskSpec(queue="q", name="n")


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_lone_call_is_written_at_once_and_calls_made_during_a_write_leave_together() -> None:
    async def scenario() -> list[int]:
        stub = FakeStub()
        session = AsyncSession(stub)
        stub.stream.gate.clear()  # the first write stays in flight
        first = asyncio.create_task(session.call(submit_call(_spec()), 5))
        await _settle()
        assert [len(m.calls) for m in stub.stream.written] == [1]
        others = [asyncio.create_task(session.call(submit_call(_spec()), 5)) for _ in range(10)]
        await _settle()
        assert len(stub.stream.written) == 1  # nothing leaves while the write is in flight
        stub.stream.gate.set()
        await _settle()
        for message in stub.stream.written:
            stub.stream.answer(message)
        replies = await asyncio.gather(first, *others)
        assert [r.submitted.task_id for r in replies] == [f"t{i}@q" for i in range(1, 12)]
        await session.close()
        return [len(m.calls) for m in stub.stream.written]

    assert asyncio.run(scenario()) == [1, 10]


def test_a_broken_stream_fails_calls_in_flight_as_unavailable_and_unimplemented_means_no_sessions() -> None:
    async def scenario(code: grpc.StatusCode) -> BaseException:
        stub = FakeStub()
        session = AsyncSession(stub)
        call = asyncio.create_task(session.call(submit_call(_spec()), 5))
        await _settle()
        stub.stream.replies.put_nowait(StreamError(code))
        with pytest.raises(Exception) as caught:
            await call
        assert session.error is not None
        await session.close()
        return caught.value

    assert isinstance(asyncio.run(scenario(grpc.StatusCode.UNAVAILABLE)), UnavailableError)
    assert isinstance(asyncio.run(scenario(grpc.StatusCode.INTERNAL)), UnavailableError)
    assert isinstance(asyncio.run(scenario(grpc.StatusCode.UNIMPLEMENTED)), SessionsUnsupported)


def test_a_call_without_an_answer_raises_deadline_exceeded() -> None:
    async def scenario() -> None:
        session = AsyncSession(FakeStub())
        with pytest.raises(DeadlineExceededError, match=r"no answer within 0\.05s"):
            await session.call(submit_call(_spec()), 0.05)
        await session.close()

    asyncio.run(scenario())


def _error_reply(code: int, field: str = "") -> ts.SessionReply:
    status = status_pb2.Status(code=code, message=f"{field}: bad" if field else "task 'x' not found")
    if field:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description="bad")]))
        status.details.append(detail)
    return ts.SessionReply(call_id=1, error=status)


@pytest.mark.parametrize(("field", "named"), [
    ("submit.priority", "task.priority"),
    ("submit_and_wait.task.queue", "task.queue"),
    ("wait.task_id", "task_id"),
    ("kind", "kind"),
])
def test_a_call_error_names_its_field_as_the_unary_rpc_would(field: str, named: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        outcome(_error_reply(code_pb2.INVALID_ARGUMENT, field))
    assert caught.value.field == named
    assert caught.value.violations == ((named, "bad"),)
    assert caught.value.message.startswith(named)


def test_a_call_error_maps_its_code_to_the_sdk_error() -> None:
    with pytest.raises(NotFoundError) as caught:
        outcome(_error_reply(code_pb2.NOT_FOUND))
    assert caught.value.code == "NOT_FOUND"


def test_a_message_takes_calls_up_to_the_byte_limit_but_always_one() -> None:
    big = 20 << 20
    pending = [submit_call(ts.TaskSpec(queue="q", name="n", payload=b"x" * big)) for _ in range(3)]
    pending.append(submit_call(ts.TaskSpec(queue="q", name="n", payload=b"x" * (60 << 20))))
    sizes = []
    while pending:
        sizes.append(len(_take(pending)))
    assert sizes == [2, 1, 1]


def test_the_sdk_asks_for_the_outcome_only() -> None:
    call = submit_and_wait_call(_spec(), 3.0)
    assert call.submit_and_wait.skip_submitted
    assert call.submit_and_wait.timeout.seconds == 3


def test_a_submit_and_wait_call_resolves_with_its_task_not_its_submitted_reply() -> None:
    """What a broker before 0.4, which ignores `skip_submitted`, answers."""
    async def scenario() -> ts.SessionReply:
        stub = FakeStub()
        session = AsyncSession(stub)
        call = ts.SessionCall(submit_and_wait=ts.SessionSubmitAndWait(task=_spec()))
        pending = asyncio.create_task(session.call(call, 5))
        await _settle()
        stub.stream.answer(stub.stream.written[0])  # `submitted` first
        await _settle()
        assert not pending.done()
        stub.stream.replies.put_nowait(ts.SessionResponse(replies=[
            ts.SessionReply(call_id=1, task=task_pb2.Task(id="t1@q", state=task_pb2.TASK_STATE_SUCCEEDED))]))
        reply = await pending
        await session.close()
        return reply

    assert asyncio.run(scenario()).task.id == "t1@q"

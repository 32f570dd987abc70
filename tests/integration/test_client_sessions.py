"""Client sessions (TaskService.OpenSession): batched submits and waits on one stream, call by call.

Raw gRPC tests pin the contract (batches, per-call errors, stream-level errors); SDK tests check
that the clients coalesce concurrent calls, survive a broker restart without resubmitting, and
fall back to the unary RPCs on a broker with sessions turned off.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from conveyor.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2

from client_sdk import AsyncClient, Client, TaskFailedError, TaskState, TaskTimeoutError, signature
from client_sdk._errors import InvalidArgumentError, NotFoundError, UnavailableError
from tests.helpers import BrokerProcess, eventually, run_async
from tests.integration.conftest import MakeBroker, StartWorker
from tests.redis_process import RedisProcess
from worker_sdk.examples import add, always_fails

ts = task_service_pb2


@pytest.fixture
def stub(fast_broker: BrokerProcess) -> Iterator[task_service_pb2_grpc.TaskServiceStub]:
    with grpc.insecure_channel(fast_broker.address) as channel:
        yield task_service_pb2_grpc.TaskServiceStub(channel)


def _spec(queue: str, **fields: object) -> ts.TaskSpec:
    return ts.TaskSpec(queue=queue, name="worker_sdk.examples.add", payload=b'{"args":[2,3],"kwargs":{}}',
                       **fields)  # type: ignore[arg-type]


def _seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(value * 1e9))
    return duration


def _session(stub: task_service_pb2_grpc.TaskServiceStub, *requests: ts.SessionRequest,
             timeout: float = 15) -> dict[int, list[ts.SessionReply]]:
    """Sends the requests, half-closes, and returns every reply by call id (the broker answers all first)."""
    replies: dict[int, list[ts.SessionReply]] = {}
    for response in stub.OpenSession(iter(requests), timeout=timeout):
        for reply in response.replies:
            replies.setdefault(reply.call_id, []).append(reply)
    return replies


def _field(status: object) -> str:
    for detail in status.details:  # type: ignore[attr-defined]
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return bad.field_violations[0].field
    return ""


def test_a_bad_call_fails_alone_naming_its_field_while_its_neighbours_are_stored(
    stub: task_service_pb2_grpc.TaskServiceStub, fast_client: Client, queue_name: str
) -> None:
    replies = _session(stub, ts.SessionRequest(calls=[
        ts.SessionCall(call_id=1, submit=_spec(queue_name)),
        ts.SessionCall(call_id=2, submit=_spec(queue_name, priority=10)),
        ts.SessionCall(call_id=3, submit=_spec(queue_name)),
        ts.SessionCall(call_id=4, wait=ts.SessionWait(task_id="nope")),
        ts.SessionCall(call_id=5),
    ]))

    assert sorted(replies) == [1, 2, 3, 4, 5]
    stored = [replies[i][0].submitted for i in (1, 3)]
    assert all(s.state == task_pb2.TASK_STATE_QUEUED and not s.duplicate for s in stored)
    bad = replies[2][0].error
    assert bad.code == code_pb2.INVALID_ARGUMENT and _field(bad) == "submit.priority"
    assert _field(replies[4][0].error) == "wait.task_id"
    assert _field(replies[5][0].error) == "kind"
    queued = {t.id for t in fast_client.list(queue_name, TaskState.QUEUED)}
    assert queued == {s.task_id for s in stored}


def test_submit_and_wait_answers_submitted_then_the_result(
    stub: task_service_pb2_grpc.TaskServiceStub, start_worker: StartWorker, queue_name: str
) -> None:
    start_worker(queue_name)
    call = ts.SessionCall(call_id=7, submit_and_wait=ts.SessionSubmitAndWait(task=_spec(queue_name),
                                                                           timeout=_seconds(10)))
    replies = _session(stub, ts.SessionRequest(calls=[call]))[7]

    assert [r.WhichOneof("outcome") for r in replies] == ["submitted", "task"]
    assert replies[1].task.id == replies[0].submitted.task_id
    assert replies[1].task.state == task_pb2.TASK_STATE_SUCCEEDED
    assert replies[1].task.result == b"5"


def test_submit_and_wait_with_skip_submitted_answers_once_with_the_result_or_the_state_at_its_deadline(
    stub: task_service_pb2_grpc.TaskServiceStub, start_worker: StartWorker, queue_name: str
) -> None:
    start_worker(queue_name)
    replies = _session(stub, ts.SessionRequest(calls=[
        ts.SessionCall(call_id=1, submit_and_wait=ts.SessionSubmitAndWait(
            task=_spec(queue_name), timeout=_seconds(10), skip_submitted=True)),
        ts.SessionCall(call_id=2, submit_and_wait=ts.SessionSubmitAndWait(
            task=_spec(queue_name, delay=_seconds(60)), timeout=_seconds(0.2), skip_submitted=True)),
        ts.SessionCall(call_id=3, submit_and_wait=ts.SessionSubmitAndWait(
            task=_spec(queue_name, priority=10), skip_submitted=True)),
    ]))

    [done], [pending], [bad] = replies[1], replies[2], replies[3]
    assert done.task.state == task_pb2.TASK_STATE_SUCCEEDED and done.task.result == b"5"
    assert done.task.id.endswith("@" + queue_name)
    assert pending.task.state == task_pb2.TASK_STATE_SCHEDULED  # as it stood when the 0.2 s passed
    assert _field(bad.error) == "submit_and_wait.task.priority"


def test_a_wait_answers_the_latest_state_when_its_timeout_passes_and_not_found_for_an_unknown_task(
    stub: task_service_pb2_grpc.TaskServiceStub, fast_client: Client, queue_name: str
) -> None:
    handle = fast_client.submit(queue_name, "worker_sdk.examples.add", b"{}")
    unknown = handle.id.replace(handle.id[:10], "0" * 10)
    started = time.monotonic()
    replies = _session(stub, ts.SessionRequest(calls=[
        ts.SessionCall(call_id=1, wait=ts.SessionWait(task_id=handle.id, timeout=_seconds(0.3))),
        ts.SessionCall(call_id=2, wait=ts.SessionWait(task_id=unknown, timeout=_seconds(5))),
        ts.SessionCall(call_id=3, wait=ts.SessionWait(task_id=handle.id, timeout=_seconds(2 * 86_400))),
    ]))

    assert 0.3 <= time.monotonic() - started < 5
    assert replies[1][0].task.state == task_pb2.TASK_STATE_QUEUED
    assert replies[2][0].error.code == code_pb2.NOT_FOUND
    assert _field(replies[3][0].error) == "wait.timeout"


@pytest.mark.parametrize(("requests", "field"), [
    ([ts.SessionRequest()], "calls"),
    ([ts.SessionRequest(calls=[ts.SessionCall(call_id=1, submit=_spec("sessions-malformed")),
                               ts.SessionCall(call_id=1, wait=ts.SessionWait(task_id="y"))])], "calls[1].call_id"),
], ids=["empty", "call-id-in-flight"])
def test_a_malformed_message_ends_the_stream_with_invalid_argument(
    stub: task_service_pb2_grpc.TaskServiceStub, requests: list[ts.SessionRequest], field: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _session(stub, *requests)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert field in (caught.value.details() or "")  # type: ignore[attr-defined]


def test_concurrent_async_submits_travel_in_few_messages_and_store_writes_and_all_land(
    fast_broker: BrokerProcess, fast_client: Client, queue_name: str
) -> None:
    before = fast_broker.metrics()

    async def submit_all() -> list[str]:
        async with AsyncClient(fast_broker.address) as client:
            handles = await asyncio.gather(*(client.enqueue(add.with_options(queue=queue_name), i, i)
                                             for i in range(500)))
            return [h.id for h in handles]

    ids = run_async(submit_all())
    after = fast_broker.metrics()

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert len(set(ids)) == 500
    assert {t.id for t in fast_client.list(queue_name, TaskState.QUEUED, page_size=1000)} == set(ids)
    assert 1 <= delta("conveyor_client_session_messages_total") <= 10
    assert 1 <= delta("conveyor_client_session_enqueue_writes_total") <= 10
    assert delta(f'conveyor_tasks_enqueued_total{{queue="{queue_name}"}}') == 500


def test_the_sdk_round_trip_and_its_errors_go_through_the_session(
    fast_broker: BrokerProcess, start_worker: StartWorker, queue_name: str
) -> None:
    start_worker(queue_name)
    calls = "conveyor_client_session_calls_total"
    submits, waits = (fast_broker.metric(calls, kind=kind) for kind in ("submit", "wait"))
    with Client(fast_broker.address) as client:
        assert client.enqueue(add.with_options(queue=queue_name), 20, 22).result(timeout=10) == 42
        with pytest.raises(InvalidArgumentError) as caught:
            client.submit(queue_name, "has space", b"{}")
        assert caught.value.field == "task.name"  # named as the unary RPC names it
        with pytest.raises(NotFoundError):
            client.wait(f"{'0' * 26}@{queue_name}", timeout=5)
        pending = client.submit(queue_name, "no.such_task", b"{}", delay=60)
        with pytest.raises(TaskTimeoutError):
            client.wait(pending.id, timeout=0.2)
        assert fast_broker.metric("conveyor_client_sessions_open") == 1
    assert fast_broker.metric(calls, kind="submit") - submits == 3
    # The 0.2 s wait may be asked again for what its answer left of the client's budget: the
    # broker's timer can fire a fraction of a millisecond early (uvloop's timers count whole ms).
    assert fast_broker.metric(calls, kind="wait") - waits in (3, 4)


def test_a_broker_killed_mid_session_fails_calls_in_flight_as_unavailable_and_the_next_call_reopens(
    make_broker: MakeBroker, queue_name: str
) -> None:
    broker = make_broker()
    assert broker.pid is not None
    with Client(broker.address, timeout=5) as client, ThreadPoolExecutor(1) as pool:
        first = client.submit(queue_name, "worker_sdk.examples.add", b"{}")
        os.kill(broker.pid, signal.SIGSTOP)  # the next submit stays in flight
        in_flight = pool.submit(client.submit, queue_name, "worker_sdk.examples.add", b"{}")
        broker.kill()
        with pytest.raises(UnavailableError):
            in_flight.result(timeout=10)
        broker.start()
        second = client.submit(queue_name, "worker_sdk.examples.add", b"{}")
        assert second.get().state is TaskState.QUEUED
        assert first.get().state is TaskState.QUEUED


def test_a_draining_broker_ends_sessions_with_unavailable_and_waits_carry_on_after_a_restart(
    make_broker: MakeBroker, queue_name: str
) -> None:
    broker = make_broker()
    with Client(broker.address, timeout=20) as client, ThreadPoolExecutor(1) as pool:
        handle = client.submit(queue_name, "worker_sdk.examples.add", b"{}")
        waiting = pool.submit(client.wait, handle.id, 20)
        eventually(lambda: broker.metric("conveyor_client_session_calls_total", kind="wait") == 1)
        started = time.monotonic()
        assert broker.stop() == 0
        assert time.monotonic() - started < 5  # an open session does not hold the drain for its grace
        broker.start()
        # A channel of its own: the waiting client's connection may be in its reconnect backoff.
        with Client(broker.address, options=[("grpc.use_local_subchannel_pool", 1)]) as other:
            other.cancel(handle.id)
        assert waiting.result(timeout=20).state is TaskState.CANCELLED


def test_clients_fall_back_to_unary_calls_on_a_broker_without_sessions(
    make_broker: MakeBroker, start_worker: StartWorker, queue_name: str
) -> None:
    broker = make_broker(client_sessions=False)
    start_worker(queue_name, broker=broker)
    with Client(broker.address) as client:
        assert client.enqueue(add.with_options(queue=queue_name), 1, 2).result(timeout=10) == 3

    async def async_round_trip() -> int:
        async with AsyncClient(broker.address) as client:
            handles = await asyncio.gather(*(client.enqueue(add.with_options(queue=queue_name), i, 1)
                                             for i in range(5)))
            return sum([await h.result(timeout=10) for h in handles])

    assert run_async(async_round_trip()) == 15
    assert broker.metric("conveyor_client_session_messages_total") == 0
    assert broker.metric("conveyor_tasks_enqueued_total", queue=queue_name) == 6


def test_a_sync_client_shared_by_threads_coalesces_their_calls(fast_broker: BrokerProcess, queue_name: str) -> None:
    before = fast_broker.metric("conveyor_client_session_calls_total", kind="submit")
    barrier = threading.Barrier(8)
    with Client(fast_broker.address) as client:
        client.submit(queue_name, "worker_sdk.examples.add", b"{}")

        def submit_some(_: int) -> list[str]:
            barrier.wait(timeout=10)
            return [client.submit(queue_name, "worker_sdk.examples.add", b"{}").id for _ in range(25)]

        with ThreadPoolExecutor(8) as pool:
            ids = [i for chunk in pool.map(submit_some, range(8)) for i in chunk]
    assert len(set(ids)) == 200
    assert fast_broker.metric("conveyor_client_session_calls_total", kind="submit") - before == 201


def test_coalesced_submits_are_written_in_batches_of_the_brokers_max_batch_size(
    make_broker: MakeBroker, queue_name: str
) -> None:
    broker = make_broker(max_batch_size=5)

    async def submit_all() -> list[str]:
        async with AsyncClient(broker.address) as client:
            handles = await asyncio.gather(*(client.enqueue(add.with_options(queue=queue_name), i, i)
                                             for i in range(23)))
            return [h.id for h in handles]

    ids = run_async(submit_all())
    assert len(set(ids)) == 23
    assert broker.metric("conveyor_tasks_enqueued_total", queue=queue_name) == 23
    assert broker.metric("conveyor_client_session_enqueue_writes_total") >= 5


def test_closing_a_client_ends_its_waits_at_once(fast_broker: BrokerProcess, queue_name: str) -> None:
    def waits() -> float:
        return fast_broker.metric("conveyor_client_session_calls_total", kind="wait")

    client = Client(fast_broker.address)
    handle = client.submit(queue_name, "worker_sdk.examples.add", b"{}")
    before = waits()
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(client.wait, handle.id, 30)
        eventually(lambda: waits() > before)
        started = time.monotonic()
        client.close()
        with pytest.raises(UnavailableError):
            waiting.result(timeout=10)
        assert time.monotonic() - started < 5

    async def close_async() -> float:
        seen = await asyncio.to_thread(waits)
        async with AsyncClient(fast_broker.address) as aclient:
            wait = asyncio.create_task(aclient.wait(handle.id, 30))
            await asyncio.to_thread(eventually, lambda: waits() > seen)
            began = time.monotonic()
        with pytest.raises(UnavailableError):
            await wait
        return time.monotonic() - began

    assert run_async(close_async()) < 5


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    server = RedisProcess()
    server.start()
    yield server
    server.close()


def test_a_store_outage_fails_each_call_with_unavailable_and_the_session_carries_on(
    own_redis: RedisProcess, make_broker: MakeBroker, queue_name: str
) -> None:
    broker = make_broker(redis_url=own_redis.url)
    with Client(broker.address, timeout=10) as client:
        before = client.submit(queue_name, "worker_sdk.examples.add", b"{}")
        own_redis.stop()
        started = time.monotonic()
        with pytest.raises(UnavailableError):
            client.submit(queue_name, "worker_sdk.examples.add", b"{}")
        assert time.monotonic() - started < 6
        assert broker.metric("conveyor_client_sessions_open") == 1  # the call failed alone: no session leaked

        own_redis.start()

        def submitted() -> str | None:
            try:
                return client.submit(queue_name, "worker_sdk.examples.add", b"{}").id
            except UnavailableError:
                return None

        after = eventually(submitted, timeout=15, interval=0.2)
        assert after is not None and after != before.id
        assert broker.metric("conveyor_client_sessions_open") == 1


def test_an_async_client_opens_again_after_close(fast_broker: BrokerProcess, queue_name: str) -> None:
    async def twice() -> list[str]:
        client = AsyncClient(fast_broker.address)
        first = await client.submit(queue_name, "worker_sdk.examples.add", b"{}")
        await client.close()
        second = await client.submit(queue_name, "worker_sdk.examples.add", b"{}")
        await client.close()
        return [first.id, second.id]

    first, second = run_async(twice())
    assert first != second


def test_call_submits_and_returns_the_result_in_one_session_call(
    fast_broker: BrokerProcess, start_worker: StartWorker, queue_name: str
) -> None:
    start_worker(queue_name)

    def calls(kind: str) -> float:
        return fast_broker.metric("conveyor_client_session_calls_total", kind=kind)

    before = calls("submit_and_wait"), calls("submit"), calls("wait")
    with Client(fast_broker.address) as client:
        assert client.call(add.s(20, 22).with_options(queue=queue_name), timeout=10) == 42
        with pytest.raises(TaskFailedError):
            client.call(always_fails.s().with_options(queue=queue_name, max_attempts=1), timeout=10)
        with pytest.raises(TaskTimeoutError):
            client.call(add.s(1, 1).with_options(queue=queue_name, delay=60), timeout=0.3)
        with pytest.raises(InvalidArgumentError):
            client.call(signature("has space").with_options(queue=queue_name), timeout=5)

    async def async_call() -> int:
        async with AsyncClient(fast_broker.address) as client:
            return int(await client.call(add.s(2, 3).with_options(queue=queue_name), timeout=10))

    assert run_async(async_call()) == 5
    assert (calls("submit_and_wait"), calls("submit"), calls("wait")) == (before[0] + 5, before[1], before[2])


def test_submits_go_straight_to_a_waiting_worker_and_its_credits_come_back(
    fast_broker: BrokerProcess, start_worker: StartWorker, queue_name: str
) -> None:
    start_worker(queue_name, concurrency=2)

    def handoffs() -> float:
        return fast_broker.metric("conveyor_submit_handoffs_total", queue=queue_name)

    with Client(fast_broker.address) as client:
        # Many more than the worker's credits, one at a time: each one's credit must come back.
        assert [client.call(add.s(i, 1).with_options(queue=queue_name), timeout=10) for i in range(12)] == \
            [i + 1 for i in range(12)]
        handed = handoffs()
        assert handed >= 6  # most went straight to the idle worker (a few may race its credits)
        # More at once than it has credits: two go to it, the rest wait in the queue for its credits.
        handles = client.enqueue_many([add.s(i, 2).with_options(queue=queue_name) for i in range(10)])
        assert [h.result(timeout=10) for h in handles] == [i + 2 for i in range(10)]
        assert client.call(add.s(5, 5).with_options(queue=queue_name), timeout=10) == 10
    assert handoffs() > handed


def test_call_falls_back_to_submit_and_wait_on_a_broker_without_sessions(
    make_broker: MakeBroker, start_worker: StartWorker, queue_name: str
) -> None:
    broker = make_broker(client_sessions=False)
    start_worker(queue_name, broker=broker)
    with Client(broker.address) as client:
        assert client.call(add.s(4, 5).with_options(queue=queue_name), timeout=10) == 9

    async def async_call() -> int:
        async with AsyncClient(broker.address) as client:
            return int(await client.call(add.s(6, 7).with_options(queue=queue_name), timeout=10))

    assert run_async(async_call()) == 13
    assert broker.metric("conveyor_tasks_enqueued_total", queue=queue_name) == 2

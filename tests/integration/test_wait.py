"""WaitTask is woken by the task's own state changes (pub/sub), not by the safety-net poll.

The module's broker polls waiters only once a minute (`wait_poll_seconds=60`), so any waiter
that sees a change within a second or two was woken by the change itself.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import grpc
from conveyor.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc

from client_sdk import AsyncClient, Client, TaskState
from tests.helpers import BrokerProcess, eventually, run_async
from tests.integration.conftest import FAST_SETTINGS, MakeBroker, StartWorker
from worker_sdk.examples import add, sleep_then_add


def test_the_broker_under_test_polls_waiters_only_once_a_minute(fast_broker: BrokerProcess) -> None:
    assert FAST_SETTINGS["wait_poll_seconds"] == 60
    assert "--wait-poll-seconds 60" in " ".join(fast_broker.argv())


def test_a_waiter_on_a_running_task_gets_its_terminal_state_as_soon_as_it_completes(
    fast_client: Client, start_worker: StartWorker, queue_name: str
) -> None:
    start_worker(queue_name)
    handle = fast_client.enqueue(sleep_then_add.with_options(queue=queue_name), 1, 2, 1.0)
    eventually(lambda: handle.get().state is TaskState.RUNNING, timeout=10, interval=0.02)

    started = time.monotonic()
    info = fast_client.wait(handle.id, timeout=30)
    returned = datetime.now(UTC)
    elapsed = time.monotonic() - started

    assert info.state is TaskState.SUCCEEDED
    assert elapsed < 5  # a 1 s task, with a 60 s poll: woken by the completion
    assert info.finished_at is not None
    assert (returned - info.finished_at).total_seconds() < 2.0


def test_a_wait_stream_reports_each_state_change_as_it_happens(
    fast_broker: BrokerProcess, start_worker: StartWorker, queue_name: str
) -> None:
    _assert_stream_sees_every_state(fast_broker, start_worker, queue_name)


def test_the_first_wait_stream_of_a_broker_gets_running_events_too(
    make_broker: MakeBroker, start_worker: StartWorker, queue_name: str
) -> None:
    # `running` events have a channel of their own, which a broker subscribes to only once it has
    # a watcher: this broker has had none before the stream.
    broker = make_broker()
    _assert_stream_sees_every_state(broker, start_worker, queue_name)


def _assert_stream_sees_every_state(broker: BrokerProcess, start_worker: StartWorker, queue_name: str) -> None:
    with Client(broker.address) as client:
        handle = client.enqueue(sleep_then_add.with_options(queue=queue_name), 3, 4, 0.5)

    with grpc.insecure_channel(broker.address) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        stream = stub.WaitTask(task_service_pb2.WaitTaskRequest(task_id=handle.id, timeout={"seconds": 30}),
                               timeout=35)
        seen: list[tuple[int, float]] = []
        worker_started = False
        for update in stream:
            seen.append((update.task.state, time.monotonic()))
            if not worker_started:
                # The waiter is in place on a QUEUED task; only now does a worker appear.
                assert update.task.state == task_pb2.TASK_STATE_QUEUED
                start_worker(queue_name, wait=False, broker=broker)
                worker_started = True

    states = [state for state, _ in seen]
    assert states == [task_pb2.TASK_STATE_QUEUED, task_pb2.TASK_STATE_RUNNING, task_pb2.TASK_STATE_SUCCEEDED]
    # RUNNING to SUCCEEDED is the 0.5 s the task sleeps, give or take: no poll in between.
    assert seen[2][1] - seen[1][1] < 3


def test_an_async_waiter_is_woken_by_the_completion_too(
    fast_broker: BrokerProcess, start_worker: StartWorker, queue_name: str
) -> None:
    start_worker(queue_name)

    async def main() -> tuple[TaskState, float, int]:
        async with AsyncClient(fast_broker.address) as client:
            handle = await client.enqueue(sleep_then_add.with_options(queue=queue_name), 5, 5, 1.0)
            started = time.monotonic()
            info = await handle.wait(timeout=30)
            return info.state, time.monotonic() - started, await handle.result(timeout=5)

    state, elapsed, result = run_async(main())
    assert (state, result) == (TaskState.SUCCEEDED, 10)
    assert elapsed < 5


def test_a_wait_with_a_timeout_ends_with_the_last_state_when_the_task_does_not_finish(
    fast_broker: BrokerProcess, queue_name: str
) -> None:
    with Client(fast_broker.address) as client:
        handle = client.enqueue(add.with_options(queue=queue_name), 1, 1)  # no worker: stays QUEUED
    with grpc.insecure_channel(fast_broker.address) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        started = time.monotonic()
        updates = list(stub.WaitTask(task_service_pb2.WaitTaskRequest(
            task_id=handle.id, timeout={"nanos": 500_000_000}), timeout=10))
        elapsed = time.monotonic() - started
    assert [u.task.state for u in updates] == [task_pb2.TASK_STATE_QUEUED]
    assert 0.4 <= elapsed < 3

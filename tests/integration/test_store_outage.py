"""A broker whose Redis is down or frozen answers UNAVAILABLE promptly, and recovers when Redis is back."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from conveyor.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client_sdk import Client, TaskInfo, TaskState, UnavailableError
from tests.helpers import eventually
from tests.integration.conftest import MakeBroker
from tests.redis_process import RedisProcess
from worker_sdk.examples import add

QUEUE = "outage"


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    server = RedisProcess()
    server.start()
    yield server
    if server.proc is not None:
        os.kill(server.proc.pid, signal.SIGCONT)
    server.close()


def _spec() -> task_service_pb2.TaskSpec:
    return task_service_pb2.TaskSpec(queue=QUEUE, name="worker_sdk.examples.add",
                                     payload=json.dumps({"args": [1, 2]}).encode())


def _calls(stub: task_service_pb2_grpc.TaskServiceStub, task_id: str) -> dict[str, Callable[[], object]]:
    """One call of each TaskService RPC, with a 10 s deadline."""
    return {
        "GetTask": lambda: stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task_id), timeout=10),
        "EnqueueTask": lambda: stub.EnqueueTask(task_service_pb2.EnqueueTaskRequest(task=_spec()), timeout=10),
        "BatchEnqueueTasks": lambda: stub.BatchEnqueueTasks(
            task_service_pb2.BatchEnqueueTasksRequest(tasks=[_spec(), _spec()]), timeout=10),
        # An unknown task: a cancel the store only sees after it comes back must not touch `task_id`.
        "CancelTask": lambda: stub.CancelTask(task_service_pb2.CancelTaskRequest(
            task_id=f"01ARZ3NDEKTSV4RRFFQ69G5FAV@{QUEUE}"), timeout=10),
        "ListTasks": lambda: stub.ListTasks(task_service_pb2.ListTasksRequest(
            queue=QUEUE, state=task_pb2.TASK_STATE_QUEUED), timeout=10),
        "WaitTask": lambda: list(stub.WaitTask(task_service_pb2.WaitTaskRequest(task_id=task_id), timeout=10)),
    }


def _assert_unavailable_quickly(stub: task_service_pb2_grpc.TaskServiceStub, task_id: str, limit: float) -> None:
    """Every RPC (all at once) ends UNAVAILABLE within `limit` seconds, well before its 10 s deadline."""

    def timed(call: Callable[[], object]) -> tuple[grpc.StatusCode | None, float, str]:
        started = time.monotonic()
        try:
            call()
        except grpc.RpcError as exc:
            return exc.code(), time.monotonic() - started, exc.details() or ""
        return None, time.monotonic() - started, "answered"

    calls = _calls(stub, task_id)
    with ThreadPoolExecutor(len(calls)) as pool:
        outcomes = dict(zip(calls, pool.map(timed, calls.values()), strict=True))
    for name, (code, elapsed, details) in outcomes.items():
        assert code is grpc.StatusCode.UNAVAILABLE, (name, code, details)
        assert elapsed < limit, f"{name} took {elapsed:.1f}s"


def _serving_status(address: str) -> int:
    """Health of conveyor.v1.TaskService, which follows the store (readiness)."""
    with grpc.insecure_channel(address) as channel:
        return int(health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="conveyor.v1.TaskService"), timeout=5).status)


def test_a_broker_whose_redis_is_down_answers_unavailable_quickly_and_recovers(
    own_redis: RedisProcess, make_broker: MakeBroker
) -> None:
    broker = make_broker(redis_url=own_redis.url)
    with Client(broker.address) as client:
        before = client.enqueue(add.with_options(queue=QUEUE), 1, 2)

    own_redis.stop()
    with grpc.insecure_channel(broker.address) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        _assert_unavailable_quickly(stub, before.id, limit=6)
    with Client(broker.address) as client, pytest.raises(UnavailableError):
        client.get(before.id)
    eventually(lambda: _serving_status(broker.address) == health_pb2.HealthCheckResponse.NOT_SERVING, timeout=10)
    assert broker.alive
    down = broker.metrics()
    assert down["conveyor_store_up"] == 0
    assert down["conveyor_store_errors_total"] >= 1

    own_redis.start()
    with Client(broker.address) as client:
        info = eventually(lambda: _get_or_none(client, before.id), timeout=15, interval=0.2)
        assert info is not None
        assert info.state is TaskState.QUEUED  # submitted before the outage, kept by the append-only file
        after = client.enqueue(add.with_options(queue=QUEUE), 3, 4)
        assert after.get().state is TaskState.QUEUED
        assert [t.id for t in client.list(QUEUE, TaskState.QUEUED)] == [before.id, after.id]
    eventually(lambda: _serving_status(broker.address) == health_pb2.HealthCheckResponse.SERVING, timeout=10)
    assert broker.metrics()["conveyor_store_up"] == 1


def test_a_broker_whose_redis_hangs_answers_unavailable_within_its_redis_timeout(
    own_redis: RedisProcess, make_broker: MakeBroker
) -> None:
    broker = make_broker(redis_url=own_redis.url, redis_timeout_seconds=1)
    with Client(broker.address) as client:
        before = client.enqueue(add.with_options(queue=QUEUE), 1, 2)

    assert own_redis.proc is not None
    os.kill(own_redis.proc.pid, signal.SIGSTOP)  # accepts connections, never answers
    try:
        with grpc.insecure_channel(broker.address) as channel:
            stub = task_service_pb2_grpc.TaskServiceStub(channel)
            _assert_unavailable_quickly(stub, before.id, limit=6)
    finally:
        os.kill(own_redis.proc.pid, signal.SIGCONT)

    with Client(broker.address) as client:
        info = eventually(lambda: _get_or_none(client, before.id), timeout=15, interval=0.2)
        assert info is not None
        assert info.state is TaskState.QUEUED


def _get_or_none(client: Client, task_id: str) -> TaskInfo | None:
    try:
        return client.get(task_id, timeout=3)
    except UnavailableError:
        return None

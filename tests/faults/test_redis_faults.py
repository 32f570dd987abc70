"""Redis restarts, dies or freezes under a running broker: acknowledged tasks survive (append-only
file), calls fail fast with UNAVAILABLE instead of hanging, and everything recovers by itself once
Redis is back, without restarting the broker or its workers."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from conveyor.v1 import task_pb2, task_service_pb2_grpc
from conveyor.v1 import task_service_pb2 as ts
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from client_sdk import Client, TaskState, UnavailableError
from tests.faults.conftest import FaultWorkerFactory
from tests.faults.journal import events, executions
from tests.faults.tasks import record
from tests.helpers import BrokerProcess, eventually
from tests.redis_process import RedisProcess

# "" reports the process (NOT_SERVING only while it shuts down); each service follows the store.
TASK_SERVICE = "conveyor.v1.TaskService"


def health(address: str, service: str = TASK_SERVICE) -> str:
    """A health status name ("SERVING", "NOT_SERVING", ...) of the broker at `address`."""
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


@pytest.mark.parametrize("hard", [False, True], ids=["graceful", "sigkill"])
def test_queued_and_delayed_tasks_survive_a_redis_restart_and_then_complete_under_the_same_broker(
    hard: bool, fault_broker: Callable[..., BrokerProcess], fault_worker: FaultWorkerFactory,
    private_redis: RedisProcess, queue_name: str, journal_path: Path,
) -> None:
    broker = fault_broker(redis_url=private_redis.url)
    broker_pid = broker.pid
    task = record.with_options(queue=queue_name)
    delay = 4.0
    with Client(broker.address) as client:
        queued = client.enqueue_many(task.s(str(journal_path), 0.0, tag=f"q{i}") for i in range(20))
        delayed = client.enqueue_many(task.with_options(delay=delay).s(str(journal_path), 0.0, tag=f"d{i}")
                                      for i in range(5))
        enqueued_at = time.time()
        if hard:
            time.sleep(1.2)  # appendfsync everysec: past one fsync period, everything is on disk
        private_redis.restart(hard=hard)

        # The same broker process serves again (its scripts are gone from the new server's cache),
        # and the first call once it says so succeeds.
        eventually(lambda: health(broker.address) == "SERVING", timeout=10)
        after = client.enqueue(task, str(journal_path), 0.0, tag="after")
        states = {h.id: client.get(h.id).state for h in (*queued, *delayed)}
        worker = fault_worker(broker)
        infos = [client.wait(h.id, timeout=20) for h in (*queued, *delayed, after)]

    assert states == {**{h.id: TaskState.QUEUED for h in queued}, **{h.id: TaskState.SCHEDULED for h in delayed}}
    assert [i.state for i in infos] == [TaskState.SUCCEEDED] * 26
    counts = executions(journal_path)
    assert sorted(counts.values()) == [1] * 26
    for h in delayed:
        assert events(journal_path, "start", h.id)[0]["t"] >= enqueued_at + delay - 0.5
    assert broker.pid == broker_pid and broker.alive
    worker.check_alive()


def raw_calls(channel: grpc.Channel, known_id: str) -> dict[str, Callable[[], object]]:
    """One call of every TaskService RPC, straight on a channel without client retries."""
    stub = task_service_pb2_grpc.TaskServiceStub(channel)
    spec = ts.TaskSpec(queue=known_id.partition("@")[2], name="tests.faults.tasks.record", payload=b"{}")
    deadline = 10.0
    return {
        "EnqueueTask": lambda: stub.EnqueueTask(ts.EnqueueTaskRequest(task=spec), timeout=deadline),
        "BatchEnqueueTasks": lambda: stub.BatchEnqueueTasks(ts.BatchEnqueueTasksRequest(tasks=[spec] * 3),
                                                            timeout=deadline),
        "GetTask": lambda: stub.GetTask(ts.GetTaskRequest(task_id=known_id), timeout=deadline),
        "CancelTask": lambda: stub.CancelTask(ts.CancelTaskRequest(task_id=known_id), timeout=deadline),
        "ListTasks": lambda: stub.ListTasks(ts.ListTasksRequest(queue=spec.queue, state=task_pb2.TASK_STATE_QUEUED),
                                            timeout=deadline),
        "WaitTask": lambda: list(stub.WaitTask(ts.WaitTaskRequest(task_id=known_id), timeout=deadline)),
    }


def answer_of(call: Callable[[], object]) -> tuple[str, bool, float]:
    """(status code name, whether the status carries RetryInfo, seconds taken) of one call."""
    started = time.monotonic()
    try:
        call()
    except grpc.RpcError as exc:
        status = rpc_status.from_call(exc)
        retry_info = status is not None and any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
        return exc.code().name, retry_info, time.monotonic() - started
    return "OK", False, time.monotonic() - started


@pytest.mark.parametrize("fault", ["killed", "frozen"])
def test_a_broker_whose_redis_is_down_answers_unavailable_promptly_and_recovers_with_its_workers(
    fault: str, fault_broker: Callable[..., BrokerProcess], fault_worker: FaultWorkerFactory,
    private_redis: RedisProcess, queue_name: str, journal_path: Path,
) -> None:
    redis_timeout = 1.0
    broker = fault_broker(redis_url=private_redis.url, redis_timeout_seconds=redis_timeout, lease_seconds=10)
    worker = fault_worker(broker)
    task = record.with_options(queue=queue_name)
    with Client(broker.address) as client, \
            grpc.insecure_channel(broker.address, options=[("grpc.enable_retries", 0)]) as channel:
        # A task runs across the outage: its worker must keep it (re-claim), not run it twice.
        spanning = client.enqueue(task, str(journal_path), 4.0, tag="spanning")
        eventually(lambda: events(journal_path, "start", spanning.id))
        known = client.enqueue(task.with_options(delay=600), str(journal_path), 0.0, tag="known")

        assert private_redis.proc is not None
        redis_pid = private_redis.proc.pid
        if fault == "killed":
            private_redis.kill()
        else:
            os.kill(redis_pid, signal.SIGSTOP)
        try:
            answers = {name: answer_of(call) for name, call in raw_calls(channel, known.id).items()}
            started = time.monotonic()
            with pytest.raises(UnavailableError):
                client.enqueue(task, str(journal_path), 0.0, tag="refused")
            sdk_seconds = time.monotonic() - started
            eventually(lambda: health(broker.address) == "NOT_SERVING", timeout=5)
        finally:
            if fault == "killed":
                private_redis.start()
            else:
                os.kill(redis_pid, signal.SIGCONT)
        back = time.monotonic()
        eventually(lambda: health(broker.address) == "SERVING", timeout=5)
        serving_after = time.monotonic() - back

        fresh = client.enqueue(task, str(journal_path), 0.0, tag="fresh")
        infos = [client.wait(h.id, timeout=20) for h in (spanning, fresh)]
        # A frozen Redis still holds the commands written to it before the broker gave up: the
        # CancelTask answered UNAVAILABLE may take effect once it wakes (one script, all or nothing).
        known_state = client.get(known.id).state
        if known_state is TaskState.SCHEDULED:
            client.cancel(known.id)

    assert {name: code for name, (code, _, _) in answers.items()} == {name: "UNAVAILABLE" for name in answers}
    assert all(retry_info for _, retry_info, _ in answers.values()), answers
    slow = {name: round(seconds, 2) for name, (_, _, seconds) in answers.items() if seconds > redis_timeout + 1}
    assert not slow, f"answers slower than the store timeout: {slow}"
    assert sdk_seconds < redis_timeout + 1
    assert serving_after < 5
    assert [i.state for i in infos] == [TaskState.SUCCEEDED] * 2
    assert known_state in ((TaskState.SCHEDULED, TaskState.CANCELLED) if fault == "frozen" else (TaskState.SCHEDULED,))
    assert executions(journal_path)[spanning.id] == 1
    assert all(e["pid"] == worker.pid for e in events(journal_path, "start"))
    assert broker.alive
    worker.check_alive()

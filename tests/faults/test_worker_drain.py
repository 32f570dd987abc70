"""SIGTERM to a worker: it stops taking tasks, lets running ones finish within its grace period,
hands the rest back at once (not after their lease) and exits 0."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from client_sdk import Client, TaskDefinition, TaskState
from tests.faults.conftest import FaultWorkerFactory
from tests.faults.journal import events, executions
from tests.faults.tasks import record, stubborn
from tests.helpers import BrokerProcess, eventually

REDELIVERIES = "conveyor_redeliveries_total"


def test_a_worker_told_to_stop_finishes_its_running_tasks_within_the_grace_and_exits_zero(
    fault_broker: Callable[..., BrokerProcess], fault_worker: FaultWorkerFactory, queue_name: str,
    journal_path: Path,
) -> None:
    broker = fault_broker()
    worker = fault_worker(broker, concurrency=2, grace=10)
    task = record.with_options(queue=queue_name)
    with Client(broker.address) as client:
        running = client.enqueue_many(task.with_options(priority=5).s(str(journal_path), 1.5, tag=f"run{i}")
                                      for i in range(2))
        waiting = client.enqueue_many(task.s(str(journal_path), 0.0, tag=f"wait{i}") for i in range(3))
        eventually(lambda: len(events(journal_path, "start")) == 2)

        signalled = time.monotonic()
        code = worker.terminate(timeout=10)
        exited_after = time.monotonic() - signalled
        finished = [client.get(h.id) for h in running]
        untouched = [client.get(h.id) for h in waiting]

        successor = fault_worker(broker)
        rest = [client.wait(h.id, timeout=15) for h in waiting]

    assert code == 0
    assert exited_after < 1.5 + 3  # the tasks' time left, plus leaving
    assert [i.state for i in finished] == [TaskState.SUCCEEDED] * 2
    assert {json.loads(i.result)["pid"] for i in finished} == {worker.pid}
    assert [i.state for i in untouched] == [TaskState.QUEUED] * 3
    assert [i.attempt for i in untouched] == [0] * 3
    assert [i.state for i in rest] == [TaskState.SUCCEEDED] * 3
    assert {json.loads(i.result)["pid"] for i in rest} == {successor.pid}
    assert sorted(executions(journal_path).values()) == [1] * 5
    assert broker.metric(REDELIVERIES) == 0


@pytest.mark.parametrize("fn", [record, stubborn], ids=["cooperative", "uncooperative"])
def test_a_task_outliving_its_workers_grace_is_handed_back_at_once_and_rerun_long_before_its_lease_ends(
    fn: TaskDefinition[..., object], fault_broker: Callable[..., BrokerProcess], fault_worker: FaultWorkerFactory,
    queue_name: str, journal_path: Path,
) -> None:
    lease = 30
    grace = 0.5
    broker = fault_broker(lease_seconds=lease)
    leaving = fault_worker(broker, grace=grace)
    with Client(broker.address) as client:
        handle = client.enqueue(fn.with_options(queue=queue_name), str(journal_path), 8.0, first_only=True)
        eventually(lambda: events(journal_path, "start", handle.id))

        assert leaving.proc is not None
        leaving.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        handed_back = eventually(lambda: client.get(handle.id).state is TaskState.QUEUED, timeout=5)
        handed_back_after = time.monotonic() - signalled
        info = client.get(handle.id)
        code = leaving.wait(timeout=10)

        successor = fault_worker(broker)
        done = client.wait(handle.id, timeout=15)
        rerun_after = time.monotonic() - signalled

    assert handed_back
    assert handed_back_after < grace + 2
    assert info.reason == "worker_shutdown"
    assert info.attempt == 1
    assert code == 0
    assert done.state is TaskState.SUCCEEDED
    assert done.attempt == 2
    assert json.loads(done.result)["pid"] == successor.pid
    assert rerun_after < lease / 2
    assert executions(journal_path)[handle.id] == 2
    assert broker.metric(REDELIVERIES, reason="worker_shutdown") == 1
    assert broker.metric(REDELIVERIES, reason="lease_expired") == 0

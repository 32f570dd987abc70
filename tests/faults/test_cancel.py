"""Cancel reaches a running task's worker at once, and stays cancelled whatever restarts or dies."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from client_sdk import Client, TaskState
from tests.faults.conftest import FaultWorkerFactory
from tests.faults.journal import events, executions
from tests.faults.tasks import record
from tests.helpers import BrokerProcess, eventually


def test_cancelling_a_running_task_reaches_its_worker_within_a_second_and_ends_it_cancelled(
    fault_broker: Callable[..., BrokerProcess], fault_worker: FaultWorkerFactory, queue_name: str,
    journal_path: Path,
) -> None:
    broker = fault_broker(lease_seconds=10)
    fault_worker(broker)
    with Client(broker.address) as client:
        handle = client.enqueue(record.with_options(queue=queue_name), str(journal_path), 30.0)
        eventually(lambda: events(journal_path, "start", handle.id))

        asked_at = time.time()
        answer = client.cancel(handle.id, reason="changed my mind")
        info = client.wait(handle.id, timeout=10)

    seen = events(journal_path, "cancelled", handle.id)
    assert answer in (TaskState.RUNNING, TaskState.CANCELLED)
    assert len(seen) == 1
    assert seen[0]["t"] - asked_at < 1.0
    assert info.state is TaskState.CANCELLED
    assert info.result == b""
    assert executions(journal_path)[handle.id] == 1


def test_a_cancelled_queued_task_stays_cancelled_across_a_broker_crash_and_never_runs(
    fault_broker: Callable[..., BrokerProcess], fault_worker: FaultWorkerFactory, queue_name: str,
    journal_path: Path,
) -> None:
    broker = fault_broker()
    task = record.with_options(queue=queue_name)
    with Client(broker.address) as client:
        cancelled = client.enqueue(task, str(journal_path), 0.0, tag="cancelled")
        delayed = client.enqueue(task.with_options(delay=1.0), str(journal_path), 0.0, tag="delayed")
        due = time.monotonic() + 1.0
        kept = client.enqueue(task, str(journal_path), 0.0, tag="kept")
        assert client.cancel(cancelled.id) is TaskState.CANCELLED
        assert client.cancel(delayed.id) is TaskState.CANCELLED

        broker.restart(hard=True)
        fault_worker(broker)
        assert client.wait(kept.id, timeout=15).state is TaskState.SUCCEEDED
        # Nothing must happen: give the promoter (every 0.1 s) time past the delayed task's due time.
        time.sleep(max(0.0, due + 0.5 - time.monotonic()))
        infos = [client.get(h.id) for h in (cancelled, delayed)]

    assert [i.state for i in infos] == [TaskState.CANCELLED] * 2
    assert set(executions(journal_path)) == {kept.id}


def test_a_cancel_its_worker_could_not_hear_survives_broker_restarts_and_stops_the_task_when_it_returns(
    fault_broker: Callable[..., BrokerProcess], fault_worker: FaultWorkerFactory, queue_name: str,
    journal_path: Path,
) -> None:
    broker = fault_broker(lease_seconds=20)
    worker = fault_worker(broker)
    with Client(broker.address) as client:
        handle = client.enqueue(record.with_options(queue=queue_name), str(journal_path), 60.0)
        eventually(lambda: events(journal_path, "start", handle.id))

        os.kill(worker.pid, signal.SIGSTOP)
        try:
            broker.restart(hard=True)  # the worker's stream dies with it, unnoticed for now
            answer = client.cancel(handle.id)
            broker.restart(hard=True)
            pending = client.get(handle.id)
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        info = client.wait(handle.id, timeout=15)
        broker.restart(hard=True)
        after_restart = client.get(handle.id)

    assert answer is TaskState.RUNNING
    assert pending.state is TaskState.RUNNING and pending.cancel_requested
    assert len(events(journal_path, "cancelled", handle.id)) == 1
    assert info.state is TaskState.CANCELLED
    assert after_restart.state is TaskState.CANCELLED
    assert executions(journal_path)[handle.id] == 1
    worker.check_alive()


def test_a_cancel_requested_for_a_task_whose_worker_then_dies_ends_it_cancelled_not_redelivered(
    fault_broker: Callable[..., BrokerProcess], fault_worker: FaultWorkerFactory, queue_name: str,
    journal_path: Path,
) -> None:
    broker = fault_broker()
    doomed = fault_worker(broker)
    with Client(broker.address) as client:
        handle = client.enqueue(record.with_options(queue=queue_name), str(journal_path), 60.0)
        eventually(lambda: events(journal_path, "start", handle.id))
        fault_worker(broker)  # would take the task if its lease expiry put it back

        os.kill(doomed.pid, signal.SIGSTOP)  # it cannot act on the cancel
        assert client.cancel(handle.id) is TaskState.RUNNING
        doomed.kill()
        info = client.wait(handle.id, timeout=10)

    assert info.state is TaskState.CANCELLED
    assert executions(journal_path)[handle.id] == 1
    assert broker.metric("conveyor_redeliveries_total") == 0

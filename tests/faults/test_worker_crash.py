"""A worker that dies, freezes or runs long: leases decide who may finish a task, and nothing runs
twice unless a lease really expired."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conveyor.v1 import worker_service_pb2 as wpb

from client_sdk import Client, TaskState
from tests.faults.conftest import FaultWorkerFactory
from tests.faults.journal import events, executions
from tests.faults.raw import RawWorker
from tests.faults.tasks import poison, record
from tests.helpers import BrokerProcess, WorkerProcess, eventually

LEASE_EXPIRED = {"reason": "lease_expired"}
REDELIVERIES = "conveyor_redeliveries_total"
STALE_REJECTIONS = "conveyor_lease_stale_rejections_total"


def decoded(raw: bytes) -> dict[str, Any]:
    value = json.loads(raw)
    assert isinstance(value, dict)
    return value


def test_a_task_whose_worker_is_killed_mid_task_is_redelivered_after_its_lease_and_completes_elsewhere(
    fault_broker: Callable[..., BrokerProcess], fault_worker: FaultWorkerFactory, queue_name: str,
    journal_path: Path,
) -> None:
    broker = fault_broker()
    first = fault_worker(broker)
    with Client(broker.address) as client:
        handle = client.enqueue(record.with_options(queue=queue_name), str(journal_path), 1.0)
        eventually(lambda: events(journal_path, "start", handle.id))
        second = fault_worker(broker)
        redelivered_before = broker.metric(REDELIVERIES, **LEASE_EXPIRED)

        first.kill()
        killed_at = time.time()
        info = client.wait(handle.id, timeout=15)

    starts = events(journal_path, "start", handle.id)
    assert info.state is TaskState.SUCCEEDED
    assert executions(journal_path)[handle.id] == 2
    assert [(s["pid"], s["attempt"]) for s in starts] == [(first.pid, 1), (second.pid, 2)]
    assert decoded(info.result)["pid"] == second.pid
    # Back within a lease (2 s) plus a sweep (0.2 s) of the kill, with slack for a busy machine.
    assert starts[1]["t"] - killed_at < 2 + 0.2 + 1.5
    assert broker.metric(REDELIVERIES, **LEASE_EXPIRED) == redelivered_before + 1


def test_a_frozen_worker_that_wakes_after_its_lease_was_given_away_cannot_store_its_result(
    fault_broker: Callable[..., BrokerProcess], fault_worker: FaultWorkerFactory, queue_name: str,
    journal_path: Path,
) -> None:
    broker = fault_broker()
    zombie = fault_worker(broker)
    with Client(broker.address) as client:
        handle = client.enqueue(record.with_options(queue=queue_name), str(journal_path), 1.0)
        eventually(lambda: events(journal_path, "start", handle.id))
        rescuer = fault_worker(broker)

        os.kill(zombie.pid, signal.SIGSTOP)
        try:
            info = client.wait(handle.id, timeout=15)
            assert info.state is TaskState.SUCCEEDED
            assert decoded(info.result)["pid"] == rescuer.pid
            rejected_before = broker.metric(STALE_REJECTIONS, queue=queue_name)
        finally:
            os.kill(zombie.pid, signal.SIGCONT)

        # The zombie's task finishes the moment it wakes (its time is up); its word is refused.
        eventually(lambda: len(events(journal_path, "end", handle.id)) == 2)
        eventually(lambda: broker.metric(STALE_REJECTIONS, queue=queue_name) > rejected_before)
        after = client.get(handle.id)
        # Once it has caught up, the zombie is a working worker again.
        rescuer.kill()
        follow_up = client.enqueue(record.with_options(queue=queue_name), str(journal_path), 0.0)
        follow_up_info = client.wait(follow_up.id, timeout=15)

    assert after.state is TaskState.SUCCEEDED
    assert after.result == info.result
    assert after.attempt == 2
    assert executions(journal_path)[handle.id] == 2
    assert [e["pid"] for e in events(journal_path, "start", handle.id)] == [zombie.pid, rescuer.pid]
    assert follow_up_info.state is TaskState.SUCCEEDED
    assert decoded(follow_up_info.result)["pid"] == zombie.pid


def test_an_outcome_sent_with_an_expired_lease_token_is_acknowledged_as_stale_and_changes_nothing(
    fault_broker: Callable[..., BrokerProcess], fault_worker: FaultWorkerFactory, queue_name: str,
    journal_path: Path,
) -> None:
    broker = fault_broker()
    with Client(broker.address) as client, \
            RawWorker(broker.address, worker_id="raw-zombie", queues=[queue_name]) as raw:
        handle = client.enqueue(record.with_options(queue=queue_name), str(journal_path), 0.0)
        raw.send(credit=wpb.Credit(credits=1))
        assignment = raw.expect("assignments").assignments.assignments[0]
        assert assignment.task_id == handle.id
        old = wpb.LeaseRef(task_id=handle.id, lease_token=assignment.lease_token)

        # No heartbeat: the lease runs out and the sweep puts the task back.
        eventually(lambda: client.get(handle.id).state is TaskState.QUEUED, timeout=10)
        assert client.get(handle.id).reason == "lease_expired"
        rescuer = fault_worker(broker)
        done = client.wait(handle.id, timeout=15)
        assert done.state is TaskState.SUCCEEDED
        rejected_before = broker.metric(STALE_REJECTIONS, queue=queue_name)

        raw.send(heartbeat=wpb.Heartbeat(leases=[old]))
        statuses = raw.expect("lease_statuses").lease_statuses.statuses
        raw.send(outcomes=wpb.Outcomes(outcomes=[wpb.Outcome(
            task_id=handle.id, lease_token=assignment.lease_token,
            success=wpb.Success(payload=b'"zombie"', content_type="application/json"))]))
        acks = raw.expect("outcome_acks").outcome_acks.acks
        raw.send(outcomes=wpb.Outcomes(outcomes=[wpb.Outcome(
            task_id=handle.id, lease_token=assignment.lease_token,
            failure=wpb.Failure(error={"type": "Zombie", "message": "late", "retryable": False}))]))
        failure_acks = raw.expect("outcome_acks").outcome_acks.acks
        after = client.get(handle.id)

    assert [(s.task_id, s.state) for s in statuses] == [(handle.id, wpb.LEASE_STATE_STALE)]
    assert [(a.task_id, a.status) for a in acks] == [(handle.id, wpb.OUTCOME_STATUS_STALE)]
    assert [(a.task_id, a.status) for a in failure_acks] == [(handle.id, wpb.OUTCOME_STATUS_STALE)]
    assert after.state is TaskState.SUCCEEDED
    assert after.result == done.result
    assert decoded(after.result)["pid"] == rescuer.pid
    assert after.error is None
    assert after.attempt == 2
    assert broker.metric(STALE_REJECTIONS, queue=queue_name) == rejected_before + 3


def test_a_task_running_three_times_its_lease_keeps_it_by_heartbeats_and_runs_once(
    fault_broker: Callable[..., BrokerProcess], fault_worker: FaultWorkerFactory, queue_name: str,
    journal_path: Path,
) -> None:
    broker = fault_broker()
    fault_worker(broker)
    fault_worker(broker)  # a second worker that would take the task if its lease lapsed
    with Client(broker.address) as client:
        handle = client.enqueue(record.with_options(queue=queue_name), str(journal_path), 6.0)
        info = client.wait(handle.id, timeout=20)

    assert info.state is TaskState.SUCCEEDED
    assert info.attempt == 1
    assert executions(journal_path)[handle.id] == 1
    assert info.lease_duration is not None and info.lease_duration.total_seconds() == 2
    assert broker.metric(REDELIVERIES) == 0
    assert broker.metric(STALE_REJECTIONS) == 0


def test_a_poison_task_that_kills_every_worker_ends_in_the_dead_letter_and_the_rest_of_the_queue_completes(
    fault_broker: Callable[..., BrokerProcess], fault_worker: FaultWorkerFactory, queue_name: str,
    journal_path: Path,
) -> None:
    broker = fault_broker()
    workers: list[WorkerProcess] = [fault_worker(broker)]

    def supervised(done: Callable[[], bool]) -> Callable[[], bool]:
        """`done`, restarting the worker whenever it has died (what a process supervisor does)."""

        def check() -> bool:
            if not workers[-1].alive:
                workers.append(fault_worker(broker, wait=False))
            return done()

        return check

    with Client(broker.address) as client:
        bad = client.enqueue(poison.with_options(queue=queue_name, max_attempts=2), str(journal_path))
        good = client.enqueue_many(record.with_options(queue=queue_name).s(str(journal_path), 0.0, tag=str(i))
                                   for i in range(5))
        eventually(supervised(lambda: client.get(bad.id).terminal), timeout=20)
        eventually(supervised(lambda: all(client.get(h.id).terminal for h in good)), timeout=20)
        dead = client.get(bad.id)
        rest = [client.get(h.id) for h in good]
        dead_letter = [i.id for i in client.list(queue_name, TaskState.FAILED)]

    assert dead.state is TaskState.FAILED
    assert dead.attempt == 2
    assert dead.reason == "lease_expired"
    assert dead.error is not None and dead.error.type == "LeaseExpired"
    assert dead_letter == [bad.id]
    assert [i.state for i in rest] == [TaskState.SUCCEEDED] * 5
    assert executions(journal_path)[bad.id] == 2
    assert sorted(executions(journal_path)[h.id] for h in good) == [1] * 5
    assert [w.returncode for w in workers[:2]] == [1, 1]

"""The broker goes away under connected workers, gracefully or not: workers come back, keep the
tasks they were running, and no task is lost or run twice."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from client_sdk import Client, TaskHandle, TaskState
from tests.faults.conftest import FaultWorkerFactory
from tests.faults.journal import events, executions
from tests.faults.raw import RawWorker
from tests.faults.tasks import record
from tests.helpers import BrokerProcess, eventually
from tests.redis_process import RedisProcess

REDELIVERIES = "conveyor_redeliveries_total"


def running_now(journal: Path) -> set[str]:
    """Tasks that started and have not ended yet."""
    ended = {e["task"] for e in events(journal, "end")}
    return {e["task"] for e in events(journal, "start")} - ended


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "sigkill"])
def test_a_broker_restarted_under_a_busy_worker_loses_no_task_and_runs_none_twice(
    hard: bool, fault_broker: Callable[..., BrokerProcess], fault_worker: FaultWorkerFactory, queue_name: str,
    journal_path: Path,
) -> None:
    # Leases outlast the restart: the worker must keep its running tasks by re-claiming them.
    broker = fault_broker(lease_seconds=8)
    worker = fault_worker(broker, concurrency=2)
    task = record.with_options(queue=queue_name)
    with Client(broker.address) as client:
        running = client.enqueue_many(task.with_options(priority=5).s(str(journal_path), 5.0, tag=f"long{i}")
                                      for i in range(2))
        queued = client.enqueue_many(task.s(str(journal_path), 0.2, tag=f"short{i}") for i in range(4))
        eventually(lambda: running_now(journal_path) == {h.id for h in running})

        broker.restart(hard=hard)
        back = time.monotonic()
        broker.wait_for_workers(1, timeout=10, watch=[worker])
        reattached_after = time.monotonic() - back
        assert running_now(journal_path) == {h.id for h in running}, "the restart outlasted the running tasks"
        infos = [client.wait(h.id, timeout=30) for h in (*running, *queued)]
        handles = [*running, *queued]

    assert reattached_after < 5
    assert [i.state for i in infos] == [TaskState.SUCCEEDED] * 6
    counts = executions(journal_path)
    assert {h.id: counts[h.id] for h in handles} == {h.id: 1 for h in handles}
    assert all(e["pid"] == worker.pid for e in events(journal_path, "start"))
    assert broker.metric(REDELIVERIES, reason="lease_expired") == 0
    worker.check_alive()


def test_a_draining_broker_tells_workers_finishes_in_flight_calls_and_exits_zero_within_its_grace(
    fault_broker: Callable[..., BrokerProcess], fault_worker: FaultWorkerFactory, private_redis: RedisProcess,
    queue_name: str, journal_path: Path,
) -> None:
    grace = 3.0
    broker = fault_broker(redis_url=private_redis.url, lease_seconds=10, shutdown_grace_seconds=grace)
    assert private_redis.proc is not None
    worker = fault_worker(broker)
    task = record.with_options(queue=queue_name)
    with Client(broker.address) as client, \
            RawWorker(broker.address, worker_id="raw-stays", queues=[queue_name + "-idle"]) as raw:
        long = client.enqueue(task, str(journal_path), 3.0, tag="running")
        queued = client.enqueue(task, str(journal_path), 0.0, tag="queued")
        eventually(lambda: events(journal_path, "start", long.id))

        # Hold one unary call inside the broker (its store frozen) while SIGTERM arrives.
        in_flight: list[TaskHandle | BaseException] = []

        def submit() -> None:
            try:
                in_flight.append(client.enqueue(task, str(journal_path), 0.0, tag="in-flight"))
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                in_flight.append(exc)

        os.kill(private_redis.proc.pid, signal.SIGSTOP)
        try:
            caller = threading.Thread(target=submit)
            caller.start()
            time.sleep(0.3)  # let the call reach the broker
            assert broker.proc is not None
            broker.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            time.sleep(0.5)
        finally:
            os.kill(private_redis.proc.pid, signal.SIGCONT)
        caller.join(10)

        drain = raw.expect("drain", timeout=5).drain
        # The raw worker never leaves: the broker must still stop within its grace.
        code = broker.proc.wait(grace + 5)
        stopped_after = time.monotonic() - signalled
        raw_end = raw.end(timeout=5)

        broker.start()
        infos = {h.id: client.wait(h.id, timeout=20)
                 for h in (long, queued, *[h for h in in_flight if isinstance(h, TaskHandle)])}

    assert len(in_flight) == 1 and isinstance(in_flight[0], TaskHandle), in_flight
    assert code == 0
    assert stopped_after < grace + 1
    assert drain.grace.ToTimedelta().total_seconds() == grace
    assert raw_end is not None  # cut off at the end of the grace, not left hanging
    assert [i.state for i in infos.values()] == [TaskState.SUCCEEDED] * 3
    counts = executions(journal_path)
    assert {t: counts[t] for t in infos} == {t: 1 for t in infos}
    assert "drain" in worker.log.lower()
    worker.check_alive()

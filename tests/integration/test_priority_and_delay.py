"""Dispatch order and run times: priorities, FIFO within a priority, delays and run_at."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis

from broker_service.store.keys import QueueKeys
from client_sdk import Client, TaskState
from tests.helpers import BrokerProcess, eventually
from tests.integration.conftest import StartWorker
from tests.integration.tasks import record, start_time
from worker_sdk.examples import add

# (label, priority) in submission order.
SUBMISSIONS = [("p0-a", 0), ("p5-a", 5), ("p9-a", 9), ("p0-b", 0), ("p5-b", 5), ("p9-b", 9),
               ("p1-a", 1), ("p0-c", 0), ("p9-c", 9), ("p5-c", 5), ("p1-b", 1), ("p0-d", 0)]


def test_queued_tasks_run_highest_priority_first_and_fifo_within_a_priority(
    fast_client: Client, start_worker: StartWorker, queue_name: str, trace_file: Path
) -> None:
    handles = [fast_client.enqueue(record.with_options(queue=queue_name, priority=priority), str(trace_file), label)
               for label, priority in SUBMISSIONS]
    assert {h.get().state for h in handles} == {TaskState.QUEUED}

    start_worker(queue_name, concurrency=1)
    for handle in handles:
        handle.result(timeout=20)

    ran = trace_file.read_text().splitlines()
    by_priority = sorted(range(len(SUBMISSIONS)), key=lambda i: (-SUBMISSIONS[i][1], i))
    assert ran == [SUBMISSIONS[i][0] for i in by_priority]


def test_listing_a_queue_shows_its_dispatch_order(
    fast_client: Client, queue_name: str
) -> None:
    handles = [fast_client.enqueue(add.with_options(queue=queue_name, priority=priority), i, i)
               for i, (_, priority) in enumerate(SUBMISSIONS)]
    listed = [info.id for info in fast_client.list(queue_name, TaskState.QUEUED, page_size=5)]
    by_priority = sorted(range(len(SUBMISSIONS)), key=lambda i: (-SUBMISSIONS[i][1], i))
    assert listed == [handles[i].id for i in by_priority]


def test_a_delayed_task_stays_scheduled_and_does_not_start_before_its_delay(
    fast_client: Client, start_worker: StartWorker, queue_name: str
) -> None:
    start_worker(queue_name)
    submitted = time.time()
    handle = fast_client.enqueue(start_time.with_options(queue=queue_name, delay=1.5))
    assert handle.get().state is TaskState.SCHEDULED

    # Meanwhile it is SCHEDULED, listed as such, and not started.
    while time.time() < submitted + 1.2:
        info = handle.get()
        assert info.state is TaskState.SCHEDULED, info
        assert info.started_at is None
        time.sleep(0.1)
    assert handle.id in [i.id for i in fast_client.list(queue_name, TaskState.SCHEDULED)]

    started = handle.result(timeout=10)
    assert started >= submitted + 1.5
    assert started < submitted + 1.5 + 2.0  # promoted promptly, not much later
    info = handle.get()
    assert info.scheduled_at is not None and info.created_at is not None
    assert info.scheduled_at - info.created_at >= timedelta(seconds=1.5)


def test_a_task_with_run_at_stays_scheduled_until_that_time(
    fast_client: Client, start_worker: StartWorker, queue_name: str
) -> None:
    start_worker(queue_name)
    run_at = datetime.now(UTC) + timedelta(seconds=1.5)
    handle = fast_client.enqueue(start_time.with_options(queue=queue_name, run_at=run_at))

    eventually(lambda: time.time() >= run_at.timestamp() - 0.3, timeout=5)
    assert handle.get().state is TaskState.SCHEDULED

    started = handle.result(timeout=10)
    assert started >= run_at.timestamp()
    assert started < run_at.timestamp() + 2.0
    info = handle.get()
    assert info.scheduled_at is not None
    assert abs((info.scheduled_at - run_at).total_seconds()) < 0.01


def test_ready_tasks_stored_by_a_broker_before_0_8_run_in_their_order(
    fast_client: Client, fast_broker: BrokerProcess, redis_client: redis.Redis, start_worker: StartWorker,
    queue_name: str, trace_file: Path
) -> None:
    """An older broker kept a ready task as its own hash in state `queued` plus an entry in the
    queue's `queued` sorted set; this one's promote pass moves them into its form, ahead of
    the tasks submitted since, and a worker runs them in their old order."""
    old = [fast_client.enqueue(record.with_options(queue=queue_name, delay=3600), str(trace_file), f"old-{i}")
           for i in range(3)]
    keys = QueueKeys(fast_broker.namespace, queue_name)
    for i, handle in enumerate(old):
        ulid = handle.id.split("@")[0]
        redis_client.zrem(keys.scheduled, ulid)
        redis_client.hset(keys.task(ulid), "state", "queued")
        redis_client.zadd(keys.queued, {ulid: 9 * 10**13 + 1_000 + i})
    new = fast_client.enqueue(record.with_options(queue=queue_name), str(trace_file), "new")

    eventually(lambda: not redis_client.exists(keys.queued), timeout=10, interval=0.05)
    start_worker(queue_name, concurrency=1)
    for handle in [*old, new]:
        handle.result(timeout=20)

    assert trace_file.read_text().splitlines() == ["old-0", "old-1", "old-2", "new"]

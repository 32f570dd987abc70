"""Ready tasks: packed records in the queue's `ready` hash, ulids in a list per priority (KEYS.md).

What every script does to a ready task is tested with the script; here: that packing loses
nothing, that the lists keep lease order across the scripts that fill them, and that stale
entries (left by cancel and expire) are passed over and do not outlive the ready tasks.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from broker_service.domain import Lease, RetryPolicy, TaskState
from broker_service.store.store import _encode_cursor
from tests.store.conftest import StoreHarness


def _keys(harness: StoreHarness):  # type: ignore[no-untyped-def]
    return harness.store.queue_keys(harness.queue)


def _make_due(harness: StoreHarness, ulid: str) -> None:
    harness.redis.zadd(_keys(harness).scheduled, {ulid: 1_000})


def _ulids(harness: StoreHarness, count: int) -> list[str]:
    return [t.ulid for t in harness.lease(count)]


def test_a_ready_task_is_a_packed_record_and_no_task_hash(harness: StoreHarness) -> None:
    [ulid] = harness.submit(1, payload=b"x" * 100)

    keys = _keys(harness)
    assert not harness.redis.exists(keys.task(ulid))
    assert harness.redis.hexists(keys.ready, ulid)
    assert harness.redis.lrange(keys.ready_list(0), 0, -1) == [ulid.encode()]
    assert harness.run(harness.store.get(harness.queue, ulid)).state is TaskState.QUEUED


def test_packing_a_task_hash_and_reading_it_back_loses_nothing(harness: StoreHarness) -> None:
    task = harness.task(
        payload=b"\x00\xff" * 90, content_type="application/x-thing", headers={"trace": "abc", "n": "1"},
        priority=7, retry=RetryPolicy(max_attempts=5, initial_backoff_ms=250, max_backoff_ms=9_000,
                                      multiplier=1.5, jitter=0.25),
        timeout_ms=4_000, lease_ms=12_000, result_ttl_ms=60_000, delay_ms=60_000, start_timeout_ms=600_000,
        unique_key="u1", concurrency_key="c1", concurrency_limit=3, schedule_id="nightly")
    harness.enqueue(task)
    scheduled = harness.run(harness.store.get(harness.queue, task.ulid))
    _make_due(harness, task.ulid)

    harness.run(harness.store.promote(harness.queue, 10))  # its task hash, packed

    assert not harness.redis.exists(_keys(harness).task(task.ulid))
    ready = harness.run(harness.store.get(harness.queue, task.ulid))
    assert ready.state is TaskState.QUEUED
    assert dataclasses.replace(ready, state=scheduled.state) == scheduled
    [leased] = harness.lease(1)  # and written back as its task hash
    assert (leased.payload, leased.content_type, leased.headers) == (task.payload, task.content_type, task.headers)
    assert (leased.lease_ms, leased.timeout_ms, leased.max_attempts) == (12_000, 4_000, 5)
    running = harness.run(harness.store.get(harness.queue, task.ulid))
    assert dataclasses.replace(running, state=scheduled.state, attempt=0, started_ms=0, lease_token=0,
                               worker_id="") == scheduled


def test_priorities_lease_highest_first_then_in_list_order(harness: StoreHarness) -> None:
    low = harness.submit(2, priority=0)
    high = harness.submit(2, priority=9)
    mid = harness.submit(1, priority=4)

    assert _ulids(harness, 5) == [*high, *mid, *low]


def test_tasks_that_waited_before_go_back_to_the_head_in_their_order(harness: StoreHarness) -> None:
    first, second, third, fourth = harness.submit(4)
    leased = harness.lease(2)
    leases = [Lease(t.ulid, t.lease_token) for t in leased]

    harness.run(harness.store.release(harness.queue, leases, "nack", True))

    assert harness.dump()["indexes"]["queued"] == [first, second, third, fourth]
    # a lease that expired goes back to the head too, ahead of what came after it
    [again] = harness.lease(1)
    harness.redis.zadd(_keys(harness).running, {again.ulid: 1})
    harness.run(harness.store.reap(harness.queue, 10, 0.5))
    assert _ulids(harness, 4) == [first, second, third, fourth]


def test_cancelled_ready_tasks_leave_stale_entries_that_lease_passes_over(harness: StoreHarness) -> None:
    ulids = harness.submit(4)
    for ulid in ulids[:3]:
        assert harness.run(harness.store.cancel(harness.queue, ulid, "")) is TaskState.CANCELLED

    dump = harness.dump()
    assert dump["ready"][0] == ulids  # three stale entries and a ready one
    assert dump["indexes"]["queued"] == [ulids[3]]
    assert harness.run(harness.store.queue_info(harness.queue)).counts[TaskState.QUEUED] == 1
    assert _ulids(harness, 2) == [ulids[3]]
    assert harness.dump()["ready"][0] == []


def test_the_last_ready_task_cancelled_or_expired_takes_the_stale_entries_along(harness: StoreHarness) -> None:
    a, b = harness.submit(2, priority=2)
    harness.run(harness.store.cancel(harness.queue, a, ""))
    assert harness.dump()["ready"][2] == [a, b]

    harness.run(harness.store.cancel(harness.queue, b, ""))

    assert harness.dump()["ready"][2] == []
    [late] = harness.submit(1, start_timeout_ms=1)
    time.sleep(0.01)
    assert harness.run(harness.store.expire(harness.queue, 10)) == [late]
    dump = harness.dump()
    assert dump["ready"][0] == [] and dump["other"] == []
    assert dump["tasks"][late]["state"] == "expired"


def test_a_lease_passes_over_a_bounded_number_of_stale_entries_per_call(harness: StoreHarness) -> None:
    ulids = harness.submit(1_002)
    keys = _keys(harness)
    harness.redis.hdel(keys.ready, *ulids[:1_001])  # 1,001 stale entries ahead of one ready task

    leased, _, retry_ms, _ = harness.run(harness.store.lease(harness.queue, 1, "w1"))

    assert leased == [] and retry_ms == 0  # call again now: the bound stopped it, tasks are left
    assert _ulids(harness, 1) == [ulids[-1]]


def test_a_ready_task_found_again_through_a_second_entry_is_leased_once(harness: StoreHarness) -> None:
    [ulid] = harness.submit(1)
    harness.redis.rpush(_keys(harness).ready_list(0), ulid)  # as a requeue leaves behind a stale twin

    assert _ulids(harness, 5) == [ulid]
    assert harness.dump()["ready"][0] == []


def test_listing_ready_tasks_pages_in_lease_order_while_the_queue_moves(harness: StoreHarness) -> None:
    low = harness.submit(3, priority=1)
    high = harness.submit(2, priority=8)
    harness.run(harness.store.cancel(harness.queue, low[0], ""))  # a stale entry in the way

    first = harness.run(harness.store.list_tasks(harness.queue, TaskState.QUEUED, 2, ""))
    assert [t.ulid for t in first.tasks] == high and first.next_cursor
    harness.lease(1)  # high[0] leaves: the cursor's entry is gone, the next page goes on
    rest = harness.run(harness.store.list_tasks(harness.queue, TaskState.QUEUED, 2, first.next_cursor))

    assert [t.ulid for t in rest.tasks] == low[1:]
    assert rest.next_cursor == ""
    assert all(t.state is TaskState.QUEUED and t.payload == b"" for t in rest.tasks)


def test_twin_entries_popped_in_one_call_lease_their_task_once(harness: StoreHarness) -> None:
    [ulid] = harness.submit(1)
    harness.redis.rpush(_keys(harness).ready_list(0), ulid, ulid)

    leased = harness.lease(5)

    assert [t.ulid for t in leased] == [ulid]
    assert harness.dump()["ready"][0] == []


@pytest.mark.parametrize("priority", ["10", "-1", "8.5", "90000000000000"])
def test_a_ready_cursor_naming_no_priority_is_malformed(harness: StoreHarness, priority: str) -> None:
    [ulid] = harness.submit(1)
    cursor = _encode_cursor(harness.queue, TaskState.QUEUED, (priority, ulid))

    with pytest.raises(ValueError, match="malformed cursor"):
        harness.run(harness.store.list_tasks(harness.queue, TaskState.QUEUED, 2, cursor))

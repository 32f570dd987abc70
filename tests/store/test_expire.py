"""expire.lua: waiting tasks past their schedule-to-start deadline end EXPIRED."""

from __future__ import annotations

import time

from tests.store.conftest import StoreHarness


def test_expire_ends_queued_and_scheduled_tasks_past_their_deadline(harness: StoreHarness) -> None:
    queued = harness.task(start_timeout_ms=1, result_ttl_ms=40_000)
    scheduled = harness.task(start_timeout_ms=60_000, delay_ms=60_000)
    fresh = harness.task(start_timeout_ms=60_000)
    harness.enqueue(queued, scheduled, fresh)
    keys = harness.store.queue_keys(harness.queue)
    harness.redis.zadd(keys.start_deadlines, {scheduled.ulid: 1})
    time.sleep(0.01)
    events = harness.events()

    expired = harness.run(harness.store.expire(harness.queue, 100))

    assert sorted(expired) == sorted([queued.ulid, scheduled.ulid])
    dump = harness.dump()
    assert dump["indexes"]["queued"] == [fresh.ulid]
    assert dump["indexes"]["scheduled"] == []
    assert dump["indexes"]["start_by"] == [fresh.ulid]
    assert sorted(dump["indexes"]["expired"]) == sorted(expired)
    record = dump["tasks"][queued.ulid]
    assert (record["state"], record["reason"]) == ("expired", "schedule_to_start")
    assert dump["expires"][queued.ulid] == int(record["finished"]) + 40_000
    [message] = events.take(1)
    assert sorted(message.split()) == sorted(["expired", queued.ulid, scheduled.ulid])


def test_expire_leaves_tasks_that_already_started(harness: StoreHarness) -> None:
    [lease] = harness.running(1, start_timeout_ms=60_000)
    keys = harness.store.queue_keys(harness.queue)
    harness.redis.zadd(keys.start_deadlines, {lease.ulid: 1})  # an index entry left behind

    assert harness.run(harness.store.expire(harness.queue, 100)) == []

    dump = harness.dump()
    assert dump["tasks"][lease.ulid]["state"] == "running"
    assert dump["indexes"]["start_by"] == []


def test_expire_handles_at_most_limit(harness: StoreHarness) -> None:
    harness.submit(3, start_timeout_ms=1)
    time.sleep(0.01)

    assert len(harness.run(harness.store.expire(harness.queue, 2))) == 2
    assert len(harness.run(harness.store.expire(harness.queue, 2))) == 1


def test_expire_publishes_nothing_when_nothing_expired(harness: StoreHarness) -> None:
    harness.submit(1, start_timeout_ms=60_000)
    events = harness.events()

    assert harness.run(harness.store.expire(harness.queue, 100)) == []
    assert events.take(0) == []


def test_expired_task_is_seen_as_expired(harness: StoreHarness) -> None:
    from broker_service.domain import TaskState

    [ulid] = harness.submit(1, start_timeout_ms=1)
    time.sleep(0.01)
    harness.run(harness.store.expire(harness.queue, 100))

    record = harness.run(harness.store.get(harness.queue, ulid))
    assert (record.state, record.reason) == (TaskState.EXPIRED, "schedule_to_start")
    assert record.finished_ms > 0

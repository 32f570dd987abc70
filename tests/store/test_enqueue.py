"""enqueue.lua: new tasks go to queued or scheduled, in priority order, with lean records."""

from __future__ import annotations

import json
from typing import Any

import msgpack

from broker_service.domain import QueueLimits, RetryPolicy, TaskState
from broker_service.store.scripts import enqueue_call
from tests.store.conftest import StoreHarness
from tests.store.helpers import redis_now_ms, without


def test_enqueue_writes_a_lean_record_and_queues_it(harness: StoreHarness) -> None:
    task = harness.task()
    before = redis_now_ms(harness.redis)

    [result] = harness.enqueue(task)

    assert result.ulid == task.ulid
    assert result.state is TaskState.QUEUED
    dump = harness.dump()
    assert dump["indexes"] == {"queued": [task.ulid], "scheduled": [], "running": [], "start_by": [], "pending": [],
                               "succeeded": [], "failed": [], "cancelled": [], "expired": []}
    assert dump["other"] == []
    assert dump["seq"] is None
    record = dump["tasks"][task.ulid]
    assert without(record) == {"state": "queued", "name": "tests.work"}
    assert "due" not in record  # ready at once: due when created, so not stored twice
    assert int(record["created"]) >= before
    assert dump["ready"][0] == [task.ulid]
    assert dump["expires"][task.ulid] == -1


def test_enqueue_stores_every_option_given(harness: StoreHarness) -> None:
    task = harness.task(payload=b'{"args": [1]}', content_type="application/x-msgpack",
                        headers={"trace": "abc"}, priority=7, timeout_ms=5000, lease_ms=1000,
                        start_timeout_ms=60_000, result_ttl_ms=10_000,
                        retry=RetryPolicy(max_attempts=5, initial_backoff_ms=10, max_backoff_ms=100,
                                          multiplier=3.0, jitter=0.5))
    harness.enqueue(task)

    record = harness.dump()["tasks"][task.ulid]
    assert without(record) == {"state": "queued", "name": "tests.work", "payload": b'{"args": [1]}',
                               "ctype": "application/x-msgpack", "headers": '{"trace":"abc"}',
                               "prio": "7", "max": "5", "b_init": "10", "b_max": "100", "b_mult": "3.0",
                               "b_jit": "0.5", "timeout": "5000", "lease": "1000", "ttl": "10000"}
    assert int(record["start_by"]) == int(record["created"]) + 60_000
    assert json.loads(record["headers"]) == {"trace": "abc"}


def test_enqueue_stores_keys_schedule_and_workflow_links(harness: StoreHarness) -> None:
    task = harness.task(idempotency_key="order-7", idempotency_ttl_ms=5000, unique_key="u-1",
                        concurrency_key="customer-9", concurrency_limit=2, schedule_id="nightly")
    harness.enqueue(task)

    record = harness.dump()["tasks"][task.ulid]
    assert without(record) == {"state": "queued", "name": "tests.work",
                               "idem": "order-7", "uniq": "u-1", "ckey": "customer-9", "climit": "2",
                               "sched": "nightly"}
    stored = harness.run(harness.store.get(harness.queue, task.ulid))
    assert (stored.idempotency_key, stored.unique_key, stored.concurrency_key, stored.concurrency_limit,
            stored.schedule_id) == ("order-7", "u-1", "customer-9", 2, "nightly")


def test_enqueue_writes_a_task_with_parents_pending(harness: StoreHarness) -> None:
    parent = harness.task()
    child = harness.task(workflow_id="wf1", workflow_node="parse", parent_ids=(parent.task_id,),
                         result_passing=2, delay_ms=5000, start_timeout_ms=7000)

    results = harness.enqueue(parent, child)

    assert [r.state for r in results] == [TaskState.QUEUED, TaskState.PENDING]
    dump = harness.dump()
    assert dump["indexes"]["pending"] == [child.ulid]
    assert dump["indexes"]["queued"] == [parent.ulid]
    assert dump["indexes"]["scheduled"] == dump["indexes"]["start_by"] == []
    record = dump["tasks"][child.ulid]
    assert without(record) == {"state": "pending", "name": "tests.work",
                               "wf": "wf1", "node": "parse", "parents": parent.task_id, "rpass": "2",
                               "delay": "5000", "start_tmo": "7000"}
    stored = harness.run(harness.store.get(harness.queue, child.ulid))
    assert stored.state is TaskState.PENDING
    assert stored.parent_ids == (parent.task_id,)
    assert (stored.workflow_id, stored.workflow_node) == ("wf1", "parse")


def test_enqueue_with_a_delay_schedules_the_task(harness: StoreHarness) -> None:
    before = redis_now_ms(harness.redis)
    task = harness.task(delay_ms=60_000)

    [result] = harness.enqueue(task)

    assert result.state is TaskState.SCHEDULED
    dump = harness.dump()
    assert dump["indexes"]["scheduled"] == [task.ulid]
    assert dump["indexes"]["queued"] == []
    record = dump["tasks"][task.ulid]
    assert record["state"] == "scheduled"
    assert int(record["due"]) == int(record["created"]) + 60_000
    assert dump["scores"]["scheduled"][task.ulid] == int(record["due"]) >= before + 60_000


def test_enqueue_with_run_at_in_the_future_schedules_at_that_time(harness: StoreHarness) -> None:
    run_at = redis_now_ms(harness.redis) + 3_600_000
    task = harness.task(run_at_ms=run_at, delay_ms=5)

    [result] = harness.enqueue(task)

    assert result.state is TaskState.SCHEDULED
    assert harness.dump()["scores"]["scheduled"] == {task.ulid: run_at}


def test_enqueue_with_run_at_in_the_past_queues_now(harness: StoreHarness) -> None:
    task = harness.task(run_at_ms=1_000)

    [result] = harness.enqueue(task)

    assert result.state is TaskState.QUEUED
    record = harness.dump()["tasks"][task.ulid]
    assert "due" not in record  # due when created
    assert harness.run(harness.store.get(harness.queue, task.ulid)).scheduled_ms == int(record["created"])


def test_enqueue_orders_by_priority_then_submission(harness: StoreHarness) -> None:
    low = harness.task(priority=0)
    high = harness.task(priority=9)
    mid_first = harness.task(priority=5)
    mid_second = harness.task(priority=5)

    harness.enqueue(low, high, mid_first, mid_second)

    assert harness.dump()["indexes"]["queued"] == [high.ulid, mid_first.ulid, mid_second.ulid, low.ulid]


def test_enqueue_of_a_mixed_batch_answers_each_task_in_order(harness: StoreHarness) -> None:
    tasks = [harness.task(), harness.task(delay_ms=60_000), harness.task()]

    results = harness.enqueue(*tasks)

    assert [(r.ulid, r.state) for r in results] == [
        (tasks[0].ulid, TaskState.QUEUED), (tasks[1].ulid, TaskState.SCHEDULED), (tasks[2].ulid, TaskState.QUEUED)]


def test_enqueue_of_runs_of_like_tasks_stores_each_as_if_sent_alone(harness: StoreHarness) -> None:
    like: dict[str, Any] = {"priority": 7, "lease_ms": 1000, "headers": {"h": "1"}}
    tasks = [harness.task(payload=b"[1]", **like), harness.task(payload=b"x" * 100, **like),
             harness.task(delay_ms=60_000), harness.task(**like),
             harness.task(payload=b"[5]", idempotency_key="k", **like),
             harness.task(payload=b"[6]", idempotency_key="k", **like)]
    # A task like the one before it travels as two entries, ulid and payload, with no row of its
    # own: this batch has two.
    _, _, args = enqueue_call(harness.store.queue_keys(harness.queue), tasks)
    entries = msgpack.unpackb(args[0], raw=True)
    assert [len(e) if isinstance(e, list) else "-" for e in entries] == [27, "-", "-", 27, 27, 27, "-", "-"]
    assert entries[1:3] == [tasks[1].ulid.encode(), tasks[1].payload]

    results = harness.enqueue(*tasks)

    assert [(r.ulid, r.state, r.duplicate) for r in results] == [
        (tasks[0].ulid, TaskState.QUEUED, False), (tasks[1].ulid, TaskState.QUEUED, False),
        (tasks[2].ulid, TaskState.SCHEDULED, False), (tasks[3].ulid, TaskState.QUEUED, False),
        (tasks[4].ulid, TaskState.QUEUED, False), (tasks[4].ulid, TaskState.QUEUED, True)]
    for task in tasks[:5]:
        stored = harness.run(harness.store.get(harness.queue, task.ulid))
        assert (stored.payload, stored.priority, stored.lease_ms, stored.headers, stored.idempotency_key) == \
            (task.payload, task.priority, task.lease_ms, task.headers, task.idempotency_key)
    assert harness.dump()["indexes"]["queued"] == [t.ulid for t in tasks if t.priority == 7][:4]


def test_enqueue_with_start_timeout_indexes_the_deadline(harness: StoreHarness) -> None:
    waiting = harness.task(start_timeout_ms=5_000)
    delayed = harness.task(start_timeout_ms=5_000, delay_ms=10_000)
    plain = harness.task()

    harness.enqueue(waiting, delayed, plain)

    dump = harness.dump()
    assert sorted(dump["indexes"]["start_by"]) == sorted([waiting.ulid, delayed.ulid])
    for task in (waiting, delayed):
        record = dump["tasks"][task.ulid]
        due = int(record.get("due", record["created"]))
        assert dump["scores"]["start_by"][task.ulid] == int(record["start_by"]) == due + 5_000
    assert "start_by" not in dump["tasks"][plain.ulid]


def test_enqueue_of_an_existing_ulid_changes_nothing(harness: StoreHarness) -> None:
    task = harness.task()
    harness.enqueue(task)
    harness.lease(1)
    before = harness.dump()

    [result] = harness.enqueue(task)

    assert result.state is TaskState.RUNNING
    assert harness.dump() == before


def test_enqueue_wakes_dispatchers_only_when_the_queue_was_empty(harness: StoreHarness) -> None:
    events = harness.events()

    harness.submit(2)
    assert events.take(1) == ["wake"]

    harness.submit(1)
    harness.submit(1, delay_ms=60_000)
    assert events.take(0) == []


def test_enqueue_of_delayed_tasks_only_publishes_nothing(harness: StoreHarness) -> None:
    events = harness.events()

    harness.submit(3, delay_ms=60_000)

    assert events.take(0) == []


def test_enqueue_of_a_large_batch_is_one_call(harness: StoreHarness) -> None:
    tasks = [harness.task(priority=i % 10) for i in range(5_000)]

    results = harness.enqueue(*tasks)

    assert len(results) == 5_000
    keys = harness.store.queue_keys(harness.queue)
    assert harness.redis.hlen(keys.ready) == 5_000
    assert [harness.redis.llen(keys.ready_list(p)) for p in range(10)] == [500] * 10


def test_enqueue_and_lease_leases_in_the_same_call_and_wakes_only_for_tasks_left(harness: StoreHarness) -> None:
    events = harness.events()
    older = harness.task(priority=1)
    harness.enqueue(older)
    assert events.take(1) == ["wake"]
    first, second = harness.task(priority=9), harness.task()

    results, batch = harness.run(harness.store.enqueue_and_lease(harness.queue, [first, second], 2, "w9"))

    assert [r.state for r in results] == [TaskState.QUEUED, TaskState.QUEUED]  # as written, before the lease
    assert [t.ulid for t in batch.leased] == [first.ulid, older.ulid]  # priority order, as any lease
    assert all(t.attempt == 1 and t.lease_token > 0 for t in batch.leased)
    dump = harness.dump()
    assert dump["indexes"]["queued"] == [second.ulid]
    assert sorted(dump["indexes"]["running"]) == sorted([first.ulid, older.ulid])
    assert dump["tasks"][first.ulid]["worker"] == "w9"
    assert events.take(2) == [f"running {first.ulid} {older.ulid}", "wake"]  # `second` is left: others wake

    harness.lease()  # `second`: the queue is empty again
    assert events.take(1) == [f"running {second.ulid}"]
    last = harness.task()
    _, batch = harness.run(harness.store.enqueue_and_lease(harness.queue, [last], 5, "w9"))
    assert [t.ulid for t in batch.leased] == [last.ulid]
    assert events.take(1) == [f"running {last.ulid}"]  # nothing left: no wake (a plain enqueue would wake)


def test_enqueue_and_lease_keeps_the_queue_limits(harness: StoreHarness) -> None:
    harness.run(harness.store.set_limits(harness.queue, QueueLimits(max_running=1)))
    tasks = [harness.task(), harness.task()]

    results, batch = harness.run(harness.store.enqueue_and_lease(harness.queue, tasks, 2, "w9"))

    assert len(results) == 2 and [t.ulid for t in batch.leased] == [tasks[0].ulid]
    assert batch.slots_full
    assert harness.dump()["indexes"]["queued"] == [tasks[1].ulid]

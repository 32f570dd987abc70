"""lease.lua: ready tasks by priority and FIFO, fresh fencing tokens, schedule-to-start expiry."""

from __future__ import annotations

import time

from broker_service.domain import Lease, TaskState
from tests.store.conftest import StoreHarness
from tests.store.helpers import event, without


def test_lease_hands_out_a_running_task_with_its_data(harness: StoreHarness) -> None:
    task = harness.task(payload=b"[1, 2]", headers={"k": "v"}, timeout_ms=0, lease_ms=2_000)
    harness.enqueue(task)

    leased, expired, *_ = harness.run(harness.store.lease(harness.queue, 10, "worker-a"))

    assert expired == []
    [got] = leased
    assert (got.ulid, got.queue, got.name, got.payload, got.content_type, got.headers) == (
        task.ulid, harness.queue, "tests.work", b"[1, 2]", "application/json", {"k": "v"})
    assert (got.attempt, got.max_attempts, got.lease_token, got.lease_ms, got.timeout_ms) == (1, 3, 1, 2_000, 0)
    dump = harness.dump()
    record = dump["tasks"][task.ulid]
    assert got.queued_at_ms == int(record["created"])  # due when created: not stored twice
    assert got.started_ms == int(record["started"])
    assert dump["indexes"]["queued"] == []
    assert dump["indexes"]["running"] == [task.ulid]
    assert dump["scores"]["running"][task.ulid] == got.started_ms + 2_000
    assert dump["seq"] == 1
    assert without(record) == {"state": "running", "name": "tests.work", "payload": b"[1, 2]",
                               "headers": '{"k":"v"}', "lease": "2000", "attempt": "1",
                               "token": "1", "worker": "worker-a"}


def test_lease_takes_higher_priority_first_then_fifo(harness: StoreHarness) -> None:
    low = harness.task(priority=1)
    first = harness.task(priority=8)
    second = harness.task(priority=8)
    harness.enqueue(low)
    harness.enqueue(first, second)

    order = [t.ulid for t in harness.lease(3)]

    assert order == [first.ulid, second.ulid, low.ulid]


def test_lease_keeps_fifo_across_separate_enqueues(harness: StoreHarness) -> None:
    ulids = [harness.submit(1)[0] for _ in range(5)]

    assert [t.ulid for t in harness.lease(5)] == ulids


def test_lease_takes_at_most_count(harness: StoreHarness) -> None:
    harness.submit(5)

    assert len(harness.lease(3)) == 3
    assert len(harness.dump()["indexes"]["queued"]) == 2
    assert len(harness.lease(10)) == 2
    assert harness.lease(10) == []


def test_lease_tokens_increase_with_every_lease(harness: StoreHarness) -> None:
    harness.submit(5)

    tokens = [t.lease_token for t in harness.lease(2)] + [t.lease_token for t in harness.lease(3)]

    assert tokens == [1, 2, 3, 4, 5]
    assert harness.dump()["seq"] == 5


def test_lease_sets_the_execution_deadline_when_sooner_than_the_lease(harness: StoreHarness) -> None:
    task = harness.task(timeout_ms=500, lease_ms=30_000)
    harness.enqueue(task)

    [got] = harness.lease(1)

    dump = harness.dump()
    assert int(dump["tasks"][task.ulid]["exec_dl"]) == got.started_ms + 500
    assert dump["scores"]["running"][task.ulid] == got.started_ms + 500


def test_lease_of_an_empty_queue_answers_nothing(harness: StoreHarness) -> None:
    events = harness.events()

    assert harness.run(harness.store.lease(harness.queue, 5, "w1"))[:2] == ([], [])
    assert harness.run(harness.store.lease(harness.queue, 0, "w1"))[:2] == ([], [])
    assert harness.dump()["seq"] is None
    assert events.take(0) == []


def test_lease_expires_tasks_past_their_start_deadline_without_counting_them(harness: StoreHarness) -> None:
    late = harness.task(start_timeout_ms=1, result_ttl_ms=60_000)
    fresh = harness.task(start_timeout_ms=60_000)
    plain = harness.task()
    harness.enqueue(late, fresh, plain)
    time.sleep(0.01)

    leased, expired, *_ = harness.run(harness.store.lease(harness.queue, 2, "w1"))

    assert [t.ulid for t in leased] == [fresh.ulid, plain.ulid]
    assert [t.lease_token for t in leased] == [1, 2]
    assert expired == [late.ulid]
    dump = harness.dump()
    record = dump["tasks"][late.ulid]
    assert (record["state"], record["reason"]) == ("expired", "schedule_to_start")
    assert "attempt" not in record
    assert dump["indexes"]["expired"] == [late.ulid]
    assert dump["scores"]["expired"][late.ulid] == int(record["finished"]) + 60_000
    assert dump["expires"][late.ulid] == int(record["finished"]) + 60_000
    assert dump["indexes"]["start_by"] == []


def test_start_deadline_no_longer_applies_once_a_task_started(harness: StoreHarness) -> None:
    [lease] = harness.running(1, start_timeout_ms=30)
    harness.run(harness.store.release(harness.queue, [lease], "nack", started=True))
    time.sleep(0.05)

    leased, expired, *_ = harness.run(harness.store.lease(harness.queue, 1, "w1"))

    assert expired == []
    assert [(t.ulid, t.attempt) for t in leased] == [(lease.ulid, 2)]


def test_lease_of_a_retry_clears_the_previous_progress(harness: StoreHarness) -> None:
    [lease] = harness.running(1)
    harness.run(harness.store.progress(harness.queue, [lease], [(0.5, "half")]))
    harness.run(harness.store.release(harness.queue, [lease], "nack", started=True))

    [again] = harness.lease(1)

    record = harness.dump()["tasks"][lease.ulid]
    assert again.attempt == 2
    assert "prog" not in record and "prog_msg" not in record


def test_lease_drops_index_entries_whose_record_is_gone(harness: StoreHarness) -> None:
    gone, kept = harness.submit(2)
    harness.drop_record(gone)

    assert [t.ulid for t in harness.lease(2)] == [kept]
    assert harness.dump()["indexes"]["queued"] == []


def test_lease_publishes_running_and_expired(harness: StoreHarness) -> None:
    late = harness.task(start_timeout_ms=1)
    ok = harness.task()
    harness.enqueue(late, ok)
    time.sleep(0.01)
    events = harness.events()

    harness.lease(5)

    assert events.take(2) == [event("running", [ok.ulid]), event("expired", [late.ulid])]


def test_leased_task_has_a_current_lease(harness: StoreHarness) -> None:
    [lease] = harness.running(1)

    record = harness.run(harness.store.get(harness.queue, lease.ulid))

    assert record.state is TaskState.RUNNING
    assert (record.lease_token, record.worker_id, record.attempt) == (lease.token, "w1", 1)
    assert harness.run(harness.store.extend(harness.queue, [Lease(lease.ulid, lease.token)], "w1"))


def test_lease_of_a_large_batch_is_one_call(harness: StoreHarness) -> None:
    harness.enqueue(*[harness.task() for _ in range(2_500)])

    leased = harness.lease(2_500)

    assert [t.lease_token for t in leased] == list(range(1, 2_501))
    dump = harness.dump()
    assert len(dump["indexes"]["running"]) == 2_500 and dump["indexes"]["queued"] == []

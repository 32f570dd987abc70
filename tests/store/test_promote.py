"""promote.lua: due scheduled tasks become ready, at the tail of their priority's list in due
order; ready tasks a broker before 0.8 left in the `queued` ZSET move into `ready` too."""

from __future__ import annotations

from broker_service.domain import TaskState
from tests.store.conftest import StoreHarness
from tests.store.helpers import event, queued_score


def _make_due(harness: StoreHarness, ulid: str, due: int) -> None:
    keys = harness.store.queue_keys(harness.queue)
    harness.redis.zadd(keys.scheduled, {ulid: due})
    harness.redis.hset(keys.task(ulid), "due", due)


def test_promote_moves_due_tasks_to_queued(harness: StoreHarness) -> None:
    due_task, later = harness.submit(2, delay_ms=60_000, priority=6)
    _make_due(harness, due_task, 1_000)
    events = harness.events()

    assert harness.run(harness.store.promote(harness.queue, 100)) == 1

    dump = harness.dump()
    assert dump["indexes"]["scheduled"] == [later]
    assert dump["indexes"]["queued"] == [due_task]
    assert dump["tasks"][due_task]["state"] == "queued"
    assert dump["ready"][6] == [due_task]
    assert int(dump["tasks"][due_task]["due"]) == 1_000
    assert events.take(1) == [event("queued", [due_task])]


def test_promoted_tasks_join_the_tail_in_due_order(harness: StoreHarness) -> None:
    [ready] = harness.submit(1)
    due_later, due_first = harness.submit(2, delay_ms=60_000)
    _make_due(harness, due_later, 2_000)
    _make_due(harness, due_first, 1_000)

    harness.run(harness.store.promote(harness.queue, 100))

    assert harness.dump()["indexes"]["queued"] == [ready, due_first, due_later]
    assert [t.ulid for t in harness.lease(3)] == [ready, due_first, due_later]


def _as_before_0_8(harness: StoreHarness, ulid: str, score: int) -> None:
    """Turns a scheduled task into a ready task as brokers before 0.8 stored it: its own hash in
    state queued and an entry in the `queued` ZSET."""
    keys = harness.store.queue_keys(harness.queue)
    harness.redis.zrem(keys.scheduled, ulid)
    harness.redis.hset(keys.task(ulid), "state", "queued")
    harness.redis.zadd(keys.queued, {ulid: score})


def test_ready_tasks_of_an_older_broker_move_into_ready_ahead_in_their_order(harness: StoreHarness) -> None:
    [new] = harness.submit(1)
    old_second, old_first, old_urgent = harness.submit(3, delay_ms=60_000, payload=b"p" * 100)
    _as_before_0_8(harness, old_second, queued_score(0, 2_000))
    _as_before_0_8(harness, old_first, queued_score(0, 1_000))
    _as_before_0_8(harness, old_urgent, queued_score(5, 3_000))
    harness.redis.hset(harness.store.queue_keys(harness.queue).task(old_urgent), "prio", 5)
    assert harness.run(harness.store.queue_info(harness.queue)).counts[TaskState.QUEUED] == 4
    events = harness.events()

    assert harness.run(harness.store.promote(harness.queue, 2)) == 2  # the two of lowest place first
    assert harness.run(harness.store.promote(harness.queue, 2)) == 1

    dump = harness.dump()
    assert dump["indexes"]["queued"] == [old_urgent, old_first, old_second, new]
    assert dump["other"] == [] and not harness.redis.exists(harness.store.queue_keys(harness.queue).queued)
    assert events.take(2) == [event("queued", [old_second, old_first]), event("queued", [old_urgent])]
    assert harness.run(harness.store.queue_info(harness.queue)).counts[TaskState.QUEUED] == 4
    leased = harness.lease(4)
    assert [t.ulid for t in leased] == [old_urgent, old_first, old_second, new]
    assert leased[0].payload == b"p" * 100


def test_a_stale_entry_of_an_older_broker_is_dropped(harness: StoreHarness) -> None:
    [gone] = harness.submit(1, delay_ms=60_000)
    _as_before_0_8(harness, gone, queued_score(0, 1_000))
    harness.drop_record(gone)

    assert harness.run(harness.store.promote(harness.queue, 10)) == 0
    assert harness.dump()["indexes"]["queued"] == []
    assert not harness.redis.exists(harness.store.queue_keys(harness.queue).queued)


def test_promote_moves_at_most_limit(harness: StoreHarness) -> None:
    ulids = harness.submit(3, delay_ms=60_000)
    for ulid in ulids:
        _make_due(harness, ulid, 1_000)

    assert harness.run(harness.store.promote(harness.queue, 2)) == 2
    assert harness.run(harness.store.promote(harness.queue, 2)) == 1
    assert harness.run(harness.store.promote(harness.queue, 2)) == 0


def test_promote_of_nothing_due_changes_nothing(harness: StoreHarness) -> None:
    harness.submit(2, delay_ms=60_000)
    before = harness.dump()
    events = harness.events()

    assert harness.run(harness.store.promote(harness.queue, 100)) == 0

    assert harness.dump() == before
    assert events.take(0) == []


def test_promote_drops_entries_of_cancelled_tasks(harness: StoreHarness) -> None:
    [ulid] = harness.submit(1, delay_ms=60_000)
    keys = harness.store.queue_keys(harness.queue)
    harness.redis.hset(keys.task(ulid), "state", "cancelled")
    _make_due(harness, ulid, 1_000)

    assert harness.run(harness.store.promote(harness.queue, 100)) == 0

    dump = harness.dump()
    assert dump["indexes"]["scheduled"] == [] and dump["indexes"]["queued"] == []

"""promote.lua: due scheduled tasks move to queued, placed by their due time."""

from __future__ import annotations

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
    assert dump["scores"]["queued"][due_task] == queued_score(6, 1_000)
    assert events.take(1) == [event("queued", [due_task])]


def test_promoted_tasks_keep_their_turn_by_due_time(harness: StoreHarness) -> None:
    [ready] = harness.submit(1)
    [was_due_earlier] = harness.submit(1, delay_ms=60_000)
    _make_due(harness, was_due_earlier, 1_000)

    harness.run(harness.store.promote(harness.queue, 100))

    assert harness.dump()["indexes"]["queued"] == [was_due_earlier, ready]


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

"""trim.lua: entries of finished tasks whose record expired leave the per-state sets."""

from __future__ import annotations

import time

from broker_service.domain import Completion
from tests.store.conftest import StoreHarness


def test_trim_drops_entries_of_expired_records(harness: StoreHarness) -> None:
    [short] = harness.running(1, result_ttl_ms=1)
    harness.run(harness.store.complete(harness.queue, [Completion(short.ulid, short.token, b"", "")]))
    [long] = harness.submit(1, result_ttl_ms=60_000)
    harness.run(harness.store.cancel(harness.queue, long, ""))
    time.sleep(0.01)

    assert harness.run(harness.store.trim(harness.queue, 100)) == 1

    dump = harness.dump()
    assert dump["indexes"]["succeeded"] == []
    assert dump["indexes"]["cancelled"] == [long]
    assert list(dump["tasks"]) == [long]


def test_trim_covers_every_finished_set_within_the_limit(harness: StoreHarness) -> None:
    keys = harness.store.queue_keys(harness.queue)
    for index in (keys.succeeded, keys.failed, keys.cancelled, keys.expired):
        harness.redis.zadd(index, {"01HAAAAAAAAAAAAAAAAAAAAAAA": 1, "01HBBBBBBBBBBBBBBBBBBBBBBB": 2})

    assert harness.run(harness.store.trim(harness.queue, 5)) == 5
    assert harness.run(harness.store.trim(harness.queue, 5)) == 3
    assert harness.run(harness.store.trim(harness.queue, 5)) == 0
    assert all(entries == [] for entries in harness.dump()["indexes"].values())


def test_trim_keeps_entries_whose_record_lives(harness: StoreHarness) -> None:
    [ulid] = harness.submit(1)
    harness.run(harness.store.cancel(harness.queue, ulid, ""))
    before = harness.dump()

    assert harness.run(harness.store.trim(harness.queue, 100)) == 0
    assert harness.dump() == before

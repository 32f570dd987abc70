"""unblock.lua: a pending node is released once, with its parents' results, its delay counted
from the release."""

from __future__ import annotations

from broker_service.domain import ParentResult
from broker_service.store.records import encode_parent_results
from tests.store.conftest import StoreHarness
from tests.store.helpers import event, redis_now_ms
from tests.store.workflow_helpers import graph


def test_unblock_releases_a_pending_node_once_with_its_parents_results(harness: StoreHarness) -> None:
    _, ulids = graph(harness, {"a": ()})
    ulid = ulids["a"]
    blob = encode_parent_results([ParentResult("p@q", "parent", b"[1]", "application/json")])
    events = harness.events()

    first = harness.run(harness.store.unblock(harness.queue, [(ulid, blob)]))
    again = harness.run(harness.store.unblock(harness.queue, [(ulid, b"other")]))

    assert (first, again) == (["queued"], ["queued"])
    dump = harness.dump()
    assert dump["indexes"]["pending"] == [] and dump["indexes"]["queued"] == [ulid]
    assert dump["tasks"][ulid]["state"] == "queued"
    assert harness.dump()["tasks"][ulid]["presults"] == blob
    assert events.take(1) == [event("queued", [ulid])]


def test_a_released_node_is_leased_with_its_parents_results(harness: StoreHarness) -> None:
    _, ulids = graph(harness, {"a": ()})
    parents = [ParentResult("p1@q", "one", b"\x00\xff:1", "application/json"), ParentResult("p2@q", "two", b"", "")]
    harness.redis.hset(harness.store.queue_keys(harness.queue).task(ulids["a"]), "rpass", "3")
    harness.run(harness.store.unblock(harness.queue, [(ulids["a"], encode_parent_results(parents))]))

    [leased] = harness.lease(1)

    assert leased.parent_results == tuple(parents)
    assert leased.result_passing == 3


def test_a_delayed_node_is_scheduled_from_its_release(harness: StoreHarness) -> None:
    task = harness.task(workflow_id="W", workflow_node="a", delay_ms=60_000, start_timeout_ms=5_000)
    harness.enqueue(task)

    assert harness.run(harness.store.unblock(harness.queue, [(task.ulid, b"")])) == ["scheduled"]

    dump = harness.dump()
    record = dump["tasks"][task.ulid]
    assert abs(int(record["due"]) - (redis_now_ms(harness.redis) + 60_000)) < 5_000
    assert int(record["start_by"]) == int(record["due"]) + 5_000
    assert "delay" not in record and "start_tmo" not in record
    assert dump["indexes"]["scheduled"] == [task.ulid] and dump["indexes"]["start_by"] == [task.ulid]


def test_unblock_leaves_tasks_that_are_not_pending(harness: StoreHarness) -> None:
    [plain] = harness.submit(1)
    before = harness.dump()

    answers = harness.run(harness.store.unblock(harness.queue, [(plain, b""), ("01HAAAAAAAAAAAAAAAAAAAAAAA", b"")]))

    assert answers == ["queued", "gone"]
    assert harness.dump() == before

"""handoff.lua: new tasks go straight to running for a waiting worker, exactly as enqueue then
lease would leave them, and only when nothing waits ahead of them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from broker_service.domain import LeasedTask, NewTask, QueueLimits, RetryPolicy
from broker_service.store.records import leased_from_reply
from tests.store.conftest import StoreHarness
from tests.store.helpers import dump_queue, redis_now_ms, without

BIG = bytes(range(256)) * 2  # stored in 64-byte pieces


def _lmpops(harness: StoreHarness) -> int:
    stats: Any = harness.redis.info("commandstats")
    return int(stats.get("cmdstat_lmpop", {}).get("calls", 0))


def _apart(harness: StoreHarness, tasks: list[NewTask], count: int) -> tuple[str, list[LeasedTask]]:
    """The same tasks through enqueue.lua and then lease.lua, in a queue of their own."""
    queue = f"{harness.queue}-apart"
    moved = [dataclasses.replace(t, queue=queue) for t in tasks]
    harness.run(harness.store.enqueue(queue, moved))
    batch = harness.run(harness.store.lease(queue, count, "w9"))
    return queue, batch.leased


def _comparable(dump: dict[str, Any]) -> dict[str, Any]:
    """A queue's dump without its times, and each running score as its distance from the start."""
    tasks = dump["tasks"]
    return {"tasks": {u: without(f) for u, f in tasks.items()},
            "running": {u: s - int(tasks[u]["started"]) for u, s in dump["scores"]["running"].items()},
            "indexes": dump["indexes"], "expires": dump["expires"], "seq": dump["seq"], "other": dump["other"]}


def _leased(task: LeasedTask) -> LeasedTask:
    return dataclasses.replace(task, queue="", queued_at_ms=0, started_ms=0)


CASES: dict[str, Callable[[StoreHarness], list[NewTask]]] = {
    "plain": lambda h: [h.task(payload=b'{"args": [1, 2]}')],
    "no payload": lambda h: [h.task()],
    "every option it takes": lambda h: [h.task(
        payload=BIG, content_type="application/x-msgpack", headers={"trace": "abc"}, priority=5,
        timeout_ms=5_000, lease_ms=10_000, result_ttl_ms=1_000, schedule_id="s1", run_at_ms=1,
        retry=RetryPolicy(max_attempts=7, initial_backoff_ms=10, max_backoff_ms=100, multiplier=1.5, jitter=0.25))],
    "an execution timeout past the lease": lambda h: [h.task(timeout_ms=60_000, lease_ms=5_000)],
    "a batch over priorities": lambda h: [h.task(payload=b"a"), h.task(payload=b"b"), h.task(priority=7),
                                          h.task(priority=7, payload=b"d"), h.task(name="other", priority=2)],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_handoff_leaves_tasks_as_enqueue_then_lease_would(harness: StoreHarness, case: str) -> None:
    tasks = CASES[case](harness)
    before = redis_now_ms(harness.redis)

    handed = harness.run(harness.store.scripts.handoff(harness.store.queue_keys(harness.queue), tasks, 8, "w9"))

    assert handed is not None
    enqueued, lease_reply = handed
    assert [e.decode() for e in enqueued] == ["queued"] * len(tasks)
    apart_queue, apart = _apart(harness, tasks, 8)
    leased, expired = leased_from_reply(harness.queue, lease_reply)
    assert expired == []
    assert [_leased(t) for t in leased] == [_leased(t) for t in apart]  # same order, tokens and fields
    dump = harness.dump()
    assert _comparable(dump) == _comparable(dump_queue(harness.redis, apart_queue))
    for task in leased:
        record = dump["tasks"][task.ulid]
        assert int(record["created"]) == int(record["started"]) == task.started_ms == task.queued_at_ms >= before
        assert "due" not in record


def test_enqueue_and_lease_hands_off_without_the_ready_lists(harness: StoreHarness) -> None:
    events = harness.events()
    task = harness.task(payload=b"x")
    lmpops = _lmpops(harness)

    [result], batch = harness.run(harness.store.enqueue_and_lease(harness.queue, [task], 4, "w9"))

    assert [t.ulid for t in batch.leased] == [task.ulid] and result.ulid == task.ulid
    assert (batch.retry_ms, batch.slots_full, batch.expired) == (-1, False, [])
    assert _lmpops(harness) == lmpops  # nothing went through `ready`
    assert events.take(1) == [f"running {task.ulid}"]  # and no `wake`: nothing is left
    dump = harness.dump()
    assert dump["indexes"]["running"] == [task.ulid] and dump["indexes"]["queued"] == []
    assert dump["tasks"][task.ulid]["worker"] == "w9"


def _waiting(harness: StoreHarness) -> None:
    harness.enqueue(harness.task())


def _limited(harness: StoreHarness) -> None:
    harness.run(harness.store.set_limits(harness.queue, QueueLimits(max_running=10)))


def _running(harness: StoreHarness) -> NewTask:
    task = harness.task()
    harness.enqueue(task)
    harness.lease(1)
    return task


# Each: what to set up first, then the tasks offered (to a worker taking 2).
NOT_APPLIED: dict[str, tuple[Callable[[StoreHarness], Any], Callable[[StoreHarness], list[NewTask]]]] = {
    "a ready task waits ahead": (_waiting, lambda h: [h.task()]),
    "the queue has limits": (_limited, lambda h: [h.task()]),
    "more tasks than the worker takes": (lambda h: None, lambda h: [h.task(), h.task(), h.task()]),
    "a delay": (lambda h: None, lambda h: [h.task(), h.task(delay_ms=60_000)]),
    "a due time ahead": (lambda h: None, lambda h: [h.task(run_at_ms=redis_now_ms(h.redis) + 60_000)]),
    "an idempotency key": (lambda h: None, lambda h: [h.task(idempotency_key="k")]),
    "a unique key": (lambda h: None, lambda h: [h.task(unique_key="k")]),
    "a concurrency key": (lambda h: None, lambda h: [h.task(concurrency_key="k", concurrency_limit=1)]),
    "a schedule-to-start timeout": (lambda h: None, lambda h: [h.task(start_timeout_ms=60_000)]),
    "a workflow node": (lambda h: None, lambda h: [h.task(workflow_id="wf", workflow_node="a")]),
    "a ulid already stored": (_running, lambda h: [dataclasses.replace(_running(h), name="again")]),
}


@pytest.mark.parametrize("case", sorted(NOT_APPLIED))
def test_handoff_writes_nothing_when_the_lease_could_take_other_tasks(harness: StoreHarness, case: str) -> None:
    setup, offered = NOT_APPLIED[case]
    setup(harness)
    tasks = offered(harness)
    before = harness.dump()

    handed = harness.run(harness.store.scripts.handoff(harness.store.queue_keys(harness.queue), tasks, 2, "w9"))

    assert handed is None
    assert harness.dump() == before

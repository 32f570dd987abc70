"""Random walks over every script that moves a task in or out of `ready`, checking after each step
that every task is in exactly one form (a task hash, or a packed record listed in its priority's
list), that the queue's count of QUEUED matches, and that the tasks leave in the order a model of
the lists predicts."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from broker_service.domain import Completion, Failure, Lease, RetryPolicy, TaskError, TaskState
from tests.store.conftest import StoreHarness

STEPS = 200


def _check_forms(harness: StoreHarness, model: dict[int, list[str]]) -> None:
    keys = harness.store.queue_keys(harness.queue)
    dump = harness.dump()
    ready: Any = {u.decode() for u in harness.redis.hkeys(keys.ready)}
    for ulid in ready:
        assert not harness.redis.exists(keys.task(ulid)), f"{ulid} is ready and has a task hash"
    live = [u for p in range(9, -1, -1) for u in model[p]]
    assert dump["indexes"]["queued"] == live  # lease order, stale entries passed over
    assert ready == set(live)
    info = harness.run(harness.store.queue_info(harness.queue))
    assert info.counts[TaskState.QUEUED] == len(live)


@pytest.mark.parametrize("seed", range(4))
def test_random_walks_keep_one_form_per_task_and_the_lists_in_order(harness: StoreHarness, seed: int) -> None:
    rng = random.Random(seed)
    model: dict[int, list[str]] = {p: [] for p in range(10)}  # ready ulids per priority, head first
    priority: dict[str, int] = {}
    running: dict[str, Lease] = {}
    delayed: list[str] = []
    retry = RetryPolicy(max_attempts=10, initial_backoff_ms=0, max_backoff_ms=0)

    for _ in range(STEPS):
        step = rng.choice(["submit", "submit", "delay", "lease", "complete", "fail", "release", "reap",
                           "cancel", "promote"])
        if step in ("submit", "delay"):
            prio = rng.choice([0, 0, 0, 9])
            task = harness.task(priority=prio, retry=retry, payload=rng.randbytes(rng.choice([0, 10, 150])),
                                delay_ms=60_000 if step == "delay" else 0)
            harness.enqueue(task)
            priority[task.ulid] = prio
            (delayed if step == "delay" else model[prio]).append(task.ulid)
        elif step == "lease":
            count = rng.randint(1, 3)
            expected = [u for p in range(9, -1, -1) for u in model[p]][:count]
            leased = harness.lease(count)
            assert [t.ulid for t in leased] == expected
            for t in leased:
                model[priority[t.ulid]].remove(t.ulid)
                running[t.ulid] = Lease(t.ulid, t.lease_token)
        elif step in ("complete", "fail", "release", "reap") and running:
            ulids = rng.sample(sorted(running), min(len(running), rng.choice([1, 2, 2, 3])))
            leases = [running.pop(u) for u in ulids]
            if step == "complete":
                harness.run(harness.store.complete(harness.queue, [Completion(x.ulid, x.token, b"r", "")
                                                                    for x in leases]))
            elif step == "fail":  # no backoff: straight back, at the tail
                harness.run(harness.store.fail(harness.queue, [Failure(x.ulid, x.token, TaskError("E", "m"))
                                                               for x in leases], [0.5] * len(leases)))
                for ulid in ulids:
                    model[priority[ulid]].append(ulid)
            else:  # released or lease expired: back at the head, in their order
                if step == "release":
                    harness.run(harness.store.release(harness.queue, leases, "nack", True))
                else:  # reap meets them in `running` order: by deadline, then by ulid
                    harness.redis.zadd(harness.store.queue_keys(harness.queue).running, {u: 1 for u in ulids})
                    harness.run(harness.store.reap(harness.queue, 10, 0.5))
                    ulids.sort()
                for ulid in reversed(ulids):
                    model[priority[ulid]].insert(0, ulid)
        elif step == "cancel":
            waiting = [u for p in model for u in model[p]]
            if waiting:
                ulid = rng.choice(waiting)
                assert harness.run(harness.store.cancel(harness.queue, ulid, "")) is TaskState.CANCELLED
                model[priority[ulid]].remove(ulid)
        elif step == "promote" and delayed:
            ulid = delayed.pop(0)
            harness.redis.zadd(harness.store.queue_keys(harness.queue).scheduled, {ulid: 1_000})
            assert harness.run(harness.store.promote(harness.queue, 10)) == 1
            model[priority[ulid]].append(ulid)
        _check_forms(harness, model)

    # every task still waiting is leased once, in the model's order
    expected = [u for p in range(9, -1, -1) for u in model[p]]
    leased = []
    deadline = time.monotonic() + 10
    while len(leased) < len(expected) and time.monotonic() < deadline:
        leased += [t.ulid for t in harness.lease(50)]
    assert leased == expected
    assert harness.lease(5) == []

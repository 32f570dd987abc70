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


class Walk:
    """The queue and a model of its ready lists, moved by one random step at a time."""

    def __init__(self, harness: StoreHarness, seed: int) -> None:
        self.harness = harness
        self.rng = random.Random(seed)
        self.model: dict[int, list[str]] = {p: [] for p in range(10)}  # ready ulids per priority, head first
        self.priority: dict[str, int] = {}
        self.running: dict[str, Lease] = {}
        self.delayed: list[str] = []

    def lease_order(self) -> list[str]:
        return [u for p in range(9, -1, -1) for u in self.model[p]]

    def step(self) -> None:
        choice = self.rng.choice(["submit", "submit", "delay", "lease", "complete", "fail", "release", "reap",
                                  "cancel", "promote"])
        if choice in ("submit", "delay"):
            self.submit(delayed=choice == "delay")
        elif choice == "lease":
            self.lease()
        elif choice in ("cancel", "promote"):
            getattr(self, choice)()
        elif self.running:
            self.end_runs(choice)

    def submit(self, delayed: bool) -> None:
        prio = self.rng.choice([0, 0, 0, 9])
        task = self.harness.task(priority=prio, retry=RetryPolicy(max_attempts=10, initial_backoff_ms=0,
                                                                  max_backoff_ms=0),
                                 payload=self.rng.randbytes(self.rng.choice([0, 10, 150])),
                                 delay_ms=60_000 if delayed else 0)
        self.harness.enqueue(task)
        self.priority[task.ulid] = prio
        (self.delayed if delayed else self.model[prio]).append(task.ulid)

    def lease(self) -> None:
        count = self.rng.randint(1, 3)
        expected = self.lease_order()[:count]
        leased = self.harness.lease(count)
        assert [t.ulid for t in leased] == expected
        for t in leased:
            self.model[self.priority[t.ulid]].remove(t.ulid)
            self.running[t.ulid] = Lease(t.ulid, t.lease_token)

    def end_runs(self, how: str) -> None:
        h, store, queue = self.harness, self.harness.store, self.harness.queue
        ulids = self.rng.sample(sorted(self.running), min(len(self.running), self.rng.choice([1, 2, 2, 3])))
        leases = [self.running.pop(u) for u in ulids]
        if how == "complete":
            h.run(store.complete(queue, [Completion(x.ulid, x.token, b"r", "") for x in leases]))
        elif how == "fail":  # no backoff: straight back, at the tail
            h.run(store.fail(queue, [Failure(x.ulid, x.token, TaskError("E", "m")) for x in leases],
                             [0.5] * len(leases)))
            for ulid in ulids:
                self.model[self.priority[ulid]].append(ulid)
        else:  # released or lease expired: back at the head, in their order
            if how == "release":
                h.run(store.release(queue, leases, "nack", True))
            else:  # reap meets them in `running` order: by deadline, then by ulid
                h.redis.zadd(store.queue_keys(queue).running, {u: 1 for u in ulids})
                h.run(store.reap(queue, 10, 0.5))
                ulids.sort()
            for ulid in reversed(ulids):
                self.model[self.priority[ulid]].insert(0, ulid)

    def cancel(self) -> None:
        waiting = self.lease_order()
        if waiting:
            ulid = self.rng.choice(waiting)
            assert self.harness.run(self.harness.store.cancel(self.harness.queue, ulid, "")) is TaskState.CANCELLED
            self.model[self.priority[ulid]].remove(ulid)

    def promote(self) -> None:
        if self.delayed:
            ulid = self.delayed.pop(0)
            self.harness.redis.zadd(self.harness.store.queue_keys(self.harness.queue).scheduled, {ulid: 1_000})
            assert self.harness.run(self.harness.store.promote(self.harness.queue, 10)) == 1
            self.model[self.priority[ulid]].append(ulid)


@pytest.mark.parametrize("seed", range(4))
def test_random_walks_keep_one_form_per_task_and_the_lists_in_order(harness: StoreHarness, seed: int) -> None:
    walk = Walk(harness, seed)
    for _ in range(STEPS):
        walk.step()
        _check_forms(harness, walk.model)

    # every task still waiting is leased once, in the model's order
    expected = walk.lease_order()
    leased: list[str] = []
    deadline = time.monotonic() + 10
    while len(leased) < len(expected) and time.monotonic() < deadline:
        leased += [t.ulid for t in harness.lease(50)]
    assert leased == expected
    assert harness.lease(5) == []

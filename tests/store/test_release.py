"""release.lua: leased tasks go back to queued in their old place; unstarted attempts do not count."""

from __future__ import annotations

import time

from broker_service.domain import Lease
from tests.store.conftest import StoreHarness
from tests.store.helpers import event


def test_release_puts_a_started_task_back_in_its_place(harness: StoreHarness) -> None:
    first, second = harness.submit(2, priority=3)
    [leased] = harness.lease(1)
    assert leased.ulid == first
    events = harness.events()

    answers = harness.run(harness.store.release(
        harness.queue, [Lease(first, leased.lease_token)], "worker_shutdown", started=True))

    assert answers == [True]
    dump = harness.dump()
    record = dump["tasks"][first]
    assert (record["state"], record["reason"], record["attempt"]) == ("queued", "worker_shutdown", "1")
    assert dump["indexes"]["running"] == []
    assert dump["indexes"]["queued"] == [first, second]
    assert dump["ready"][3] == [first, second]  # back at the head of its priority's list
    assert events.take(1) == [event("queued", [first])]


def test_release_puts_a_delayed_task_back_at_its_due_time_not_its_creation(harness: StoreHarness) -> None:
    leased = harness.leased_after_delay(30)

    assert harness.run(harness.store.release(
        harness.queue, [Lease(leased.ulid, leased.lease_token)], "nack", started=True)) == [True]

    dump = harness.dump()
    record = dump["tasks"][leased.ulid]
    assert int(record["due"]) == int(record["created"]) + 30
    assert leased.queued_at_ms == int(record["due"])
    assert dump["indexes"]["queued"] == [leased.ulid]


def test_release_of_an_unstarted_task_does_not_count_the_attempt(harness: StoreHarness) -> None:
    [lease] = harness.running(1)

    assert harness.run(harness.store.release(harness.queue, [lease], "broker_drained", started=False)) == [True]

    record = harness.dump()["tasks"][lease.ulid]
    assert record["attempt"] == "0"
    assert "started" not in record
    [again] = harness.lease(1)
    assert again.attempt == 1
    assert again.lease_token == lease.token + 1


def test_release_of_an_unstarted_task_restores_its_start_deadline(harness: StoreHarness) -> None:
    [lease] = harness.running(1, start_timeout_ms=30)
    assert harness.dump()["indexes"]["start_by"] == []

    harness.run(harness.store.release(harness.queue, [lease], "nack", started=False))

    assert harness.dump()["indexes"]["start_by"] == [lease.ulid]
    time.sleep(0.05)
    leased, expired, *_ = harness.run(harness.store.lease(harness.queue, 1, "w1"))
    assert (leased, expired) == ([], [lease.ulid])


def test_release_of_a_task_with_a_cancel_request_cancels_it(harness: StoreHarness) -> None:
    [lease] = harness.running(1)
    harness.run(harness.store.cancel(harness.queue, lease.ulid, "stop"))
    events = harness.events()

    assert harness.run(harness.store.release(harness.queue, [lease], "worker_shutdown", started=True)) == [True]

    dump = harness.dump()
    assert dump["tasks"][lease.ulid]["state"] == "cancelled"
    assert dump["tasks"][lease.ulid]["reason"] == "stop"
    assert dump["indexes"]["queued"] == []
    assert dump["indexes"]["cancelled"] == [lease.ulid]
    assert events.take(1) == [event("cancelled", [lease.ulid])]


def test_release_with_a_stale_token_changes_nothing(harness: StoreHarness) -> None:
    [lease] = harness.running(1)
    before = harness.dump()

    answers = harness.run(harness.store.release(harness.queue, [Lease(lease.ulid, 7)], "nack", started=True))

    assert answers == [False]
    assert harness.dump() == before

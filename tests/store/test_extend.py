"""extend.lua: renews current leases, refuses stale ones, reports cancel requests."""

from __future__ import annotations

import time

from broker_service.domain import Lease, LeaseState
from tests.store.conftest import StoreHarness
from tests.store.helpers import redis_now_ms


def test_extend_renews_an_active_lease(harness: StoreHarness) -> None:
    [lease] = harness.running(1, lease_ms=10_000)
    first_score = harness.dump()["scores"]["running"][lease.ulid]
    time.sleep(0.01)

    [state] = harness.run(harness.store.extend(harness.queue, [lease], "w1"))

    assert state is LeaseState.ACTIVE
    score = harness.dump()["scores"]["running"][lease.ulid]
    assert score > first_score
    assert score >= redis_now_ms(harness.redis) - 100 + 10_000 - 1_000


def test_extend_never_goes_past_the_execution_deadline(harness: StoreHarness) -> None:
    [lease] = harness.running(1, lease_ms=60_000, timeout_ms=2_000)

    harness.run(harness.store.extend(harness.queue, [lease], "w1"))

    dump = harness.dump()
    assert dump["scores"]["running"][lease.ulid] == int(dump["tasks"][lease.ulid]["exec_dl"])


def test_extend_refuses_a_stale_token(harness: StoreHarness) -> None:
    [lease] = harness.running(1)
    before = harness.dump()

    states = harness.run(harness.store.extend(harness.queue, [Lease(lease.ulid, lease.token + 1)], "w1"))

    assert states == [LeaseState.STALE]
    assert harness.dump() == before


def test_extend_of_a_task_that_is_not_running_is_stale(harness: StoreHarness) -> None:
    [waiting] = harness.submit(1)
    missing = Lease("01HZZZZZZZZZZZZZZZZZZZZZZZ", 1)

    states = harness.run(harness.store.extend(harness.queue, [Lease(waiting, 0), missing], "w1"))

    assert states == [LeaseState.STALE, LeaseState.STALE]
    assert harness.dump()["indexes"]["running"] == []


def test_extend_reports_a_cancel_request_and_keeps_the_lease(harness: StoreHarness) -> None:
    [lease] = harness.running(1)
    harness.run(harness.store.cancel(harness.queue, lease.ulid, "no longer needed"))

    [state] = harness.run(harness.store.extend(harness.queue, [lease], "w1"))

    assert state is LeaseState.CANCEL_REQUESTED
    assert harness.dump()["indexes"]["running"] == [lease.ulid]


def test_extend_answers_per_lease_in_order(harness: StoreHarness) -> None:
    a, b, c = harness.running(3)
    harness.run(harness.store.cancel(harness.queue, b.ulid, ""))

    states = harness.run(harness.store.extend(harness.queue, [c, Lease(a.ulid, 99), b], "w1"))

    assert states == [LeaseState.ACTIVE, LeaseState.STALE, LeaseState.CANCEL_REQUESTED]


def test_extend_by_a_reconnected_worker_records_its_id(harness: StoreHarness) -> None:
    [lease] = harness.running(1)

    harness.run(harness.store.extend(harness.queue, [lease], "w1-reconnected"))

    assert harness.dump()["tasks"][lease.ulid]["worker"] == "w1-reconnected"


def test_extend_of_nothing_answers_nothing(harness: StoreHarness) -> None:
    assert harness.run(harness.store.extend(harness.queue, [], "w1")) == []

"""cancel_running.lua: a worker reports it stopped a cancelled task; it ends CANCELLED."""

from __future__ import annotations

from broker_service.domain import Lease
from tests.store.conftest import StoreHarness
from tests.store.helpers import event


def test_cancelled_ends_a_running_task_with_a_cancel_request(harness: StoreHarness) -> None:
    [lease] = harness.running(1, result_ttl_ms=20_000)
    harness.run(harness.store.cancel(harness.queue, lease.ulid, "operator"))
    events = harness.events()

    assert harness.run(harness.store.cancelled(harness.queue, [lease])) == [True]

    dump = harness.dump()
    record = dump["tasks"][lease.ulid]
    assert (record["state"], record["reason"], "cancel" in record) == ("cancelled", "operator", False)
    assert dump["indexes"]["running"] == []
    assert dump["indexes"]["cancelled"] == [lease.ulid]
    assert dump["scores"]["cancelled"][lease.ulid] == int(record["finished"]) + 20_000
    assert dump["expires"][lease.ulid] == int(record["finished"]) + 20_000
    assert events.take(1) == [event("cancelled", [lease.ulid])]


def test_cancelled_without_a_request_records_the_plain_reason(harness: StoreHarness) -> None:
    [lease] = harness.running(1)

    assert harness.run(harness.store.cancelled(harness.queue, [lease])) == [True]

    assert harness.dump()["tasks"][lease.ulid]["reason"] == "cancelled"


def test_cancelled_with_a_stale_token_changes_nothing(harness: StoreHarness) -> None:
    [lease] = harness.running(1)
    before = harness.dump()
    unknown = Lease("01HZZZZZZZZZZZZZZZZZZZZZZZ", 1)

    answers = harness.run(harness.store.cancelled(harness.queue, [Lease(lease.ulid, 0), unknown]))

    assert answers == [False, False]
    assert harness.dump() == before


def test_cancelled_after_the_task_finished_is_stale(harness: StoreHarness) -> None:
    [lease] = harness.running(1)
    assert harness.run(harness.store.cancelled(harness.queue, [lease])) == [True]

    assert harness.run(harness.store.cancelled(harness.queue, [lease])) == [False]

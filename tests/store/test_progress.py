"""progress.lua: progress of current attempts is stored and announced; stale reports are refused."""

from __future__ import annotations

from broker_service.domain import Lease
from tests.store.conftest import StoreHarness
from tests.store.helpers import event


def test_progress_is_stored_and_published(harness: StoreHarness) -> None:
    a, b = harness.running(2)
    events = harness.events()

    answers = harness.run(harness.store.progress(harness.queue, [a, b], [(0.25, "a quarter"), (1.0, "")]))

    assert answers == [True, True]
    dump = harness.dump()
    assert (dump["tasks"][a.ulid]["prog"], dump["tasks"][a.ulid]["prog_msg"]) == ("0.25", "a quarter")
    assert dump["tasks"][b.ulid]["prog"] == "1.0"
    assert "prog_msg" not in dump["tasks"][b.ulid]
    record = harness.run(harness.store.get(harness.queue, a.ulid))
    assert (record.progress, record.progress_message) == (0.25, "a quarter")
    assert events.take(1) == [event("progress", [a.ulid, b.ulid])]


def test_progress_without_a_message_clears_the_previous_one(harness: StoreHarness) -> None:
    [lease] = harness.running(1)
    harness.run(harness.store.progress(harness.queue, [lease], [(0.1, "starting")]))

    harness.run(harness.store.progress(harness.queue, [lease], [(0.2, "")]))

    assert "prog_msg" not in harness.dump()["tasks"][lease.ulid]


def test_progress_with_a_stale_token_is_refused(harness: StoreHarness) -> None:
    [lease] = harness.running(1)
    before = harness.dump()
    events = harness.events()

    answers = harness.run(harness.store.progress(harness.queue, [Lease(lease.ulid, 0)], [(0.5, "x")]))

    assert answers == [False]
    assert harness.dump() == before
    assert events.take(0) == []

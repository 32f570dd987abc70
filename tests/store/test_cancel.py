"""cancel.lua: waiting tasks end CANCELLED at once; running ones get a durable cancel request."""

from __future__ import annotations

import pytest

from broker_service.domain import TaskNotFoundError, TaskState, TaskTerminalError
from tests.store.conftest import StoreHarness
from tests.store.helpers import event


def test_cancel_of_a_queued_task_ends_it_at_once(harness: StoreHarness) -> None:
    task = harness.task(start_timeout_ms=60_000, result_ttl_ms=30_000)
    harness.enqueue(task)
    events = harness.events()

    assert harness.run(harness.store.cancel(harness.queue, task.ulid, "not needed")) is TaskState.CANCELLED

    dump = harness.dump()
    record = dump["tasks"][task.ulid]
    assert (record["state"], record["reason"]) == ("cancelled", "not needed")
    assert dump["indexes"] == {"queued": [], "scheduled": [], "running": [], "start_by": [], "pending": [],
                               "succeeded": [],
                               "failed": [], "cancelled": [task.ulid], "expired": []}
    assert dump["scores"]["cancelled"][task.ulid] == int(record["finished"]) + 30_000
    assert dump["expires"][task.ulid] == int(record["finished"]) + 30_000
    assert events.take(1) == [event("cancelled", [task.ulid])]


def test_cancel_of_a_scheduled_task_ends_it_at_once(harness: StoreHarness) -> None:
    [ulid] = harness.submit(1, delay_ms=60_000)

    assert harness.run(harness.store.cancel(harness.queue, ulid, "")) is TaskState.CANCELLED

    dump = harness.dump()
    assert dump["indexes"]["scheduled"] == []
    assert dump["indexes"]["cancelled"] == [ulid]
    assert dump["tasks"][ulid]["reason"] == "cancelled"


def test_cancel_of_a_running_task_requests_it_from_the_worker(harness: StoreHarness) -> None:
    [lease] = harness.running(1)
    events = harness.events()

    assert harness.run(harness.store.cancel(harness.queue, lease.ulid, "too slow")) is TaskState.RUNNING

    dump = harness.dump()
    record = dump["tasks"][lease.ulid]
    assert (record["state"], record["cancel"], record["reason"]) == ("running", "1", "too slow")
    assert dump["indexes"]["running"] == [lease.ulid]
    assert dump["expires"][lease.ulid] == -1
    assert harness.run(harness.store.get(harness.queue, lease.ulid)).cancel_requested
    assert events.take(1) == [event("cancel", [lease.ulid])]


def test_cancel_of_a_finished_task_is_refused(harness: StoreHarness) -> None:
    [ulid] = harness.submit(1)
    harness.run(harness.store.cancel(harness.queue, ulid, ""))
    before = harness.dump()

    with pytest.raises(TaskTerminalError):
        harness.run(harness.store.cancel(harness.queue, ulid, ""))

    assert harness.dump() == before


def test_cancel_of_an_unknown_task_is_not_found(harness: StoreHarness) -> None:
    with pytest.raises(TaskNotFoundError):
        harness.run(harness.store.cancel(harness.queue, "01HZZZZZZZZZZZZZZZZZZZZZZZ", ""))

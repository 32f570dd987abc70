"""read.lua: a task is read from its hash or, while it is ready, from its packed record, in one call."""

from __future__ import annotations

from broker_service.domain import TaskState
from tests.store.conftest import StoreHarness
from tests.store.helpers import new_task


def _commands(harness: StoreHarness) -> dict[str, int]:
    """Commands the server ran since its stats were last reset, but the test's own INFO and CONFIG."""
    stats = harness.redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()
            if not name.startswith(("cmdstat_info", "cmdstat_config"))}


def test_get_many_reads_ready_running_and_gone_tasks_of_several_queues_in_order(harness: StoreHarness) -> None:
    other = f"{harness.queue}-b"
    running, ready, gone = harness.submit(3)
    assert [t.ulid for t in harness.lease(1)] == [running]
    harness.drop_record(gone)
    ready_b = [new_task(other) for _ in range(2)]
    harness.run(harness.store.enqueue(other, ready_b))
    wanted = [(harness.queue, ready), (other, ready_b[1].ulid), (harness.queue, running),
              (harness.queue, gone), (other, ready_b[0].ulid)]

    records = harness.run(harness.store.get_many(wanted))

    assert [(r.queue, r.ulid, r.state) if r else None for r in records] == [
        (harness.queue, ready, TaskState.QUEUED), (other, ready_b[1].ulid, TaskState.QUEUED),
        (harness.queue, running, TaskState.RUNNING), None, (other, ready_b[0].ulid, TaskState.QUEUED)]


def test_a_queue_s_tasks_are_read_in_one_script_call_wherever_they_are(harness: StoreHarness) -> None:
    running, ready, gone = harness.submit(3, payload=b"p" * 200)
    assert [t.ulid for t in harness.lease(1)] == [running]
    harness.drop_record(gone)
    harness.redis.config_resetstat()

    records = harness.run(harness.store.get_many([(harness.queue, u) for u in (ready, running, gone)]))

    # One call (the script's own commands count too): no second round trip for the ready one.
    assert _commands(harness) == {"evalsha": 1, "hgetall": 3, "hget": 2}
    assert [(r.ulid, r.state, r.payload) if r else None for r in records] == [
        (ready, TaskState.QUEUED, b"p" * 200), (running, TaskState.RUNNING, b"p" * 200), None]


def test_a_task_is_found_on_either_side_of_a_lease(harness: StoreHarness) -> None:
    [ulid] = harness.submit(1)
    before = harness.run(harness.store.get(harness.queue, ulid))

    harness.lease(1)
    after = harness.run(harness.store.get(harness.queue, ulid))

    assert (before.state, after.state) == (TaskState.QUEUED, TaskState.RUNNING)
    assert (before.name, before.created_ms) == (after.name, after.created_ms)
    assert after.attempt == before.attempt + 1


def test_no_tasks_read_nothing(harness: StoreHarness) -> None:
    harness.redis.config_resetstat()

    assert harness.run(harness.store.get_many([])) == []
    assert _commands(harness) == {}

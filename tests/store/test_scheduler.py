"""The scheduler pass on a real store: a crash between submit and advance, racing replicas, downtime."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from broker_service.domain import TaskState
from broker_service.loops.scheduler import Scheduler
from broker_service.metrics import Metrics
from broker_service.schedule import MissedTicks, tick_task, tick_ulid
from tests.store.conftest import ScheduleHarness
from tests.store.helpers import redis_now_ms
from tests.store.schedule_helpers import spec


def scheduler(h: ScheduleHarness, grace_seconds: float = 5.0) -> tuple[Scheduler, Metrics]:
    metrics = Metrics(CollectorRegistry())
    return Scheduler(h.store, metrics, interval=0.25, grace_seconds=grace_seconds), metrics


def queued(h: ScheduleHarness, queue: str = "q") -> list[str]:
    page = h.run(h.store.list_tasks(queue, TaskState.QUEUED, 1000, ""))
    return sorted(t.ulid for t in page.tasks)


def fired(metrics: Metrics) -> float:
    return float(metrics.schedule_ticks_fired.labels("q")._value.get())


def test_a_pass_after_a_crash_between_submit_and_advance_submits_nothing_twice(schedules: ScheduleHarness) -> None:
    now = redis_now_ms(schedules.redis)
    tick = now - 500
    s = spec("a", interval_ms=60_000)
    schedules.run(schedules.store.put_schedule(s, tick - 60_000, tick))
    # The crashed pass got as far as submitting the tick's task.
    schedules.run(schedules.store.enqueue("q", [tick_task(s, tick)]))
    loop, metrics = scheduler(schedules)

    schedules.run(loop.tick())

    assert queued(schedules) == [tick_ulid("a", tick)]
    stored = schedules.run(schedules.store.get_schedule("a"))
    assert (stored.next_fire_ms, stored.fire_count, stored.last_fire_ms) == (tick + 60_000, 1, tick)
    assert stored.last_task_id == f"{tick_ulid('a', tick)}@q"
    assert fired(metrics) == 1


def test_racing_passes_submit_each_tick_once_and_count_it_once(schedules: ScheduleHarness) -> None:
    now = redis_now_ms(schedules.redis)
    for name in "abcdef":
        schedules.run(schedules.store.put_schedule(spec(name, interval_ms=60_000), now - 61_000, now - 1_000))
    passes = [scheduler(schedules) for _ in range(4)]

    async def race() -> None:
        await asyncio.gather(*(loop.tick() for loop, _ in passes))

    schedules.run(race())

    assert queued(schedules) == sorted(tick_ulid(name, now - 1_000) for name in "abcdef")
    assert sum(fired(metrics) for _, metrics in passes) == 6
    assert all(schedules.run(schedules.store.get_schedule(name)).fire_count == 1 for name in "abcdef")


@pytest.mark.parametrize(("missed", "ticks", "skipped"), [
    (MissedTicks.FIRE_ONCE, [9], 9),
    (MissedTicks.SKIP, [], 10),
    (MissedTicks.CATCH_UP, list(range(10)), 0),
])
def test_ticks_missed_during_a_downtime_follow_the_policy(
        schedules: ScheduleHarness, missed: MissedTicks, ticks: list[int], skipped: int) -> None:
    now = redis_now_ms(schedules.redis)
    # Ten ticks 10 s apart, the newest 7 s ago (past a 5 s grace); the next one is 3 s ahead.
    first = now - 97_000
    schedules.run(schedules.store.put_schedule(spec("a", interval_ms=10_000, missed=missed), first - 10_000, first))
    loop, metrics = scheduler(schedules, grace_seconds=5)

    schedules.run(loop.tick())

    assert queued(schedules) == [tick_ulid("a", first + k * 10_000) for k in ticks]
    assert schedules.run(schedules.store.get_schedule("a")).next_fire_ms == first + 100_000
    assert metrics.schedule_ticks_skipped.labels("q")._value.get() == skipped
    assert fired(metrics) == len(ticks)
    assert metrics.schedules._value.get() == 1

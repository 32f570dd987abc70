"""put_schedule.lua: a schedule is created, or replaced keeping its state and, for the same trigger, its ticks."""

from __future__ import annotations

import json

from broker_service.domain import RetryPolicy
from broker_service.schedule import MissedTicks
from tests.store.conftest import ScheduleHarness
from tests.store.helpers import redis_now_ms
from tests.store.schedule_helpers import spec


def test_put_creates_an_active_schedule(schedules: ScheduleHarness) -> None:
    before = redis_now_ms(schedules.redis)

    schedule, created = schedules.run(schedules.store.put_schedule(spec("a", interval_ms=60_000), 1_000, 61_000))

    assert created
    stored = schedules.hash("a")
    assert json.loads(stored.pop("task")) == {"queue": "q", "name": "tests.work", "payload": "eyJhcmdzIjpbXX0="}
    assert int(stored.pop("created")) == int(stored.pop("updated")) >= before
    assert stored == {"every": "60000", "missed": "1", "next": "61000", "anchor": "1000", "fires": "0"}
    assert schedules.due() == [("a", 61_000)]
    assert schedules.ids() == ["a"]
    assert schedule.next_fire_ms == 61_000 and not schedule.paused and schedule.spec == spec("a", interval_ms=60_000)


def test_put_keeps_every_task_option_of_the_template(schedules: ScheduleHarness) -> None:
    base = spec("opts", cron="*/5 * * * *", time_zone="Europe/Paris", description="five", missed=MissedTicks.SKIP)
    task = base.task.__class__(ulid="", queue="other", name="tests.work", payload=b"\x00\xff", content_type="x/y",
                               headers={"h": "v"}, priority=4, retry=RetryPolicy(max_attempts=7, jitter=0.5),
                               timeout_ms=9_000, lease_ms=4_000, start_timeout_ms=2_000, result_ttl_ms=5_000,
                               unique_key="u", concurrency_key="c", concurrency_limit=2)
    full = base.__class__(**{**{f: getattr(base, f) for f in base.__slots__}, "task": task})

    schedules.run(schedules.store.put_schedule(full, 0, 300_000))
    read = schedules.run(schedules.store.get_schedule("opts"))

    assert read.spec == full
    assert schedules.hash("opts")["cron"] == "*/5 * * * *"
    assert schedules.hash("opts")["tz"] == "Europe/Paris"


def test_put_again_with_the_same_trigger_keeps_the_next_tick_and_the_counters(schedules: ScheduleHarness) -> None:
    store = schedules.store
    schedules.run(store.put_schedule(spec("a"), 1_000, 2_000))
    assert schedules.run(store.advance_schedule("a", 2_000, 3_000, [2_000], "T@q"))
    schedules.run(store.pause_schedule("a"))

    schedule, created = schedules.run(store.put_schedule(spec("a", description="new text"), 9_000, 10_000))

    assert not created
    assert schedule.next_fire_ms == 3_000 and schedule.anchor_ms == 1_000
    assert schedule.paused and schedule.fire_count == 1 and schedule.last_task_id == "T@q"
    assert schedule.spec.description == "new text"
    assert schedules.due() == []  # still paused


def test_put_with_a_new_trigger_takes_the_new_ticks(schedules: ScheduleHarness) -> None:
    store = schedules.store
    schedules.run(store.put_schedule(spec("a", description="old"), 1_000, 2_000))

    schedule, _ = schedules.run(store.put_schedule(spec("a", cron="* * * * *"), 5_000, 60_000))

    assert schedule.next_fire_ms == 60_000 and schedule.anchor_ms == 5_000
    assert schedule.spec.interval_ms == 0 and schedule.spec.description == ""
    assert "every" not in schedules.hash("a") and "desc" not in schedules.hash("a")
    assert schedules.due() == [("a", 60_000)]


def test_put_schedules_are_due_by_next_tick_and_listed_by_id(schedules: ScheduleHarness) -> None:
    store = schedules.store
    for name, next_ms in (("c", 3_000), ("a", 1_000), ("b", 2_000)):
        schedules.run(store.put_schedule(spec(name), 0, next_ms))

    assert schedules.run(store.due_schedules(2_000, 10)) == ["a", "b"]
    page, last = schedules.run(store.list_schedules("", 2))
    assert [s.id for s in page] == ["a", "b"] and last == "b"
    page, last = schedules.run(store.list_schedules("b", 2))
    assert [s.id for s in page] == ["c"] and last == ""
    assert schedules.run(store.schedule_count()) == 3

"""resume_schedule.lua: a resumed schedule is due again from its old next tick, and remembers when it resumed."""

from __future__ import annotations

import pytest

from broker_service.schedule import ScheduleNotFoundError
from tests.store.conftest import ScheduleHarness
from tests.store.helpers import redis_now_ms
from tests.store.schedule_helpers import spec


def test_resume_puts_the_schedule_back_at_its_old_next_tick(schedules: ScheduleHarness) -> None:
    schedules.run(schedules.store.put_schedule(spec("a"), 1_000, 2_000))
    schedules.run(schedules.store.pause_schedule("a"))
    before = redis_now_ms(schedules.redis)

    schedule = schedules.run(schedules.store.resume_schedule("a"))

    assert not schedule.paused and schedule.next_fire_ms == 2_000
    assert schedule.resumed_ms == schedule.updated_ms >= before
    assert "paused" not in schedules.hash("a")
    assert schedules.due() == [("a", 2_000)]


def test_resuming_an_active_schedule_changes_nothing(schedules: ScheduleHarness) -> None:
    schedules.run(schedules.store.put_schedule(spec("a"), 1_000, 2_000))
    before = schedules.hash("a")

    schedule = schedules.run(schedules.store.resume_schedule("a"))

    assert schedules.hash("a") == before
    assert schedule.resumed_ms == 0


def test_resume_of_an_unknown_schedule_is_not_found(schedules: ScheduleHarness) -> None:
    with pytest.raises(ScheduleNotFoundError):
        schedules.run(schedules.store.resume_schedule("nope"))
    assert schedules.due() == []

"""pause_schedule.lua: a paused schedule leaves the due index and keeps its next tick."""

from __future__ import annotations

import pytest

from broker_service.schedule import ScheduleNotFoundError
from tests.store.conftest import ScheduleHarness
from tests.store.schedule_helpers import spec


def test_pause_takes_the_schedule_out_of_the_due_index(schedules: ScheduleHarness) -> None:
    schedules.run(schedules.store.put_schedule(spec("a"), 1_000, 2_000))

    schedule = schedules.run(schedules.store.pause_schedule("a"))

    assert schedule.paused and schedule.next_fire_ms == 2_000
    assert schedules.hash("a")["paused"] == "1"
    assert schedules.due() == []
    assert schedules.ids() == ["a"]


def test_pausing_a_paused_schedule_changes_nothing(schedules: ScheduleHarness) -> None:
    schedules.run(schedules.store.put_schedule(spec("a"), 1_000, 2_000))
    schedules.run(schedules.store.pause_schedule("a"))
    before = schedules.hash("a")

    schedules.run(schedules.store.pause_schedule("a"))

    assert schedules.hash("a") == before


def test_pause_of_an_unknown_schedule_is_not_found(schedules: ScheduleHarness) -> None:
    with pytest.raises(ScheduleNotFoundError):
        schedules.run(schedules.store.pause_schedule("nope"))
    assert schedules.hash("nope") == {}

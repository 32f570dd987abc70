"""delete_schedule.lua: every key entry of the schedule goes."""

from __future__ import annotations

import pytest

from broker_service.schedule import ScheduleNotFoundError
from tests.store.conftest import ScheduleHarness
from tests.store.schedule_helpers import spec


def test_delete_removes_the_hash_and_both_index_entries(schedules: ScheduleHarness) -> None:
    schedules.run(schedules.store.put_schedule(spec("a"), 1_000, 2_000))
    schedules.run(schedules.store.put_schedule(spec("b"), 1_000, 2_000))

    schedules.run(schedules.store.delete_schedule("a"))

    assert schedules.hash("a") == {}
    assert schedules.due() == [("b", 2_000)]
    assert schedules.ids() == ["b"]
    with pytest.raises(ScheduleNotFoundError):
        schedules.run(schedules.store.get_schedule("a"))


def test_delete_of_an_unknown_schedule_is_not_found(schedules: ScheduleHarness) -> None:
    with pytest.raises(ScheduleNotFoundError):
        schedules.run(schedules.store.delete_schedule("nope"))

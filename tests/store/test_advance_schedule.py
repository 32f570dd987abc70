"""advance_schedule.lua: a compare-and-set on the next tick; the winner counts the ticks it submitted."""

from __future__ import annotations

from tests.store.conftest import ScheduleHarness
from tests.store.schedule_helpers import spec


def test_advance_moves_the_next_tick_and_counts_the_fired_ones(schedules: ScheduleHarness) -> None:
    store = schedules.store
    schedules.run(store.put_schedule(spec("a"), 1_000, 2_000))

    assert schedules.run(store.advance_schedule("a", 2_000, 5_000, [2_000, 3_000, 4_000], "T4@q"))

    stored = schedules.hash("a")
    assert (stored["next"], stored["last"], stored["last_task"], stored["fires"]) == ("5000", "4000", "T4@q", "3")
    assert schedules.due() == [("a", 5_000)]


def test_only_one_of_two_racing_passes_advances(schedules: ScheduleHarness) -> None:
    store = schedules.store
    schedules.run(store.put_schedule(spec("a"), 1_000, 2_000))

    first = schedules.run(store.advance_schedule("a", 2_000, 3_000, [2_000], "T2@q"))
    second = schedules.run(store.advance_schedule("a", 2_000, 3_000, [2_000], "T2@q"))

    assert (first, second) == (True, False)
    assert schedules.hash("a")["fires"] == "1"


def test_advance_that_skipped_every_tick_leaves_the_last_fire_alone(schedules: ScheduleHarness) -> None:
    store = schedules.store
    schedules.run(store.put_schedule(spec("a"), 1_000, 2_000))

    assert schedules.run(store.advance_schedule("a", 2_000, 9_000, [], ""))

    stored = schedules.hash("a")
    assert stored["next"] == "9000" and stored["fires"] == "0" and "last" not in stored


def test_advance_leaves_a_paused_or_deleted_schedule_alone(schedules: ScheduleHarness) -> None:
    store = schedules.store
    schedules.run(store.put_schedule(spec("a"), 1_000, 2_000))
    schedules.run(store.pause_schedule("a"))
    schedules.run(store.put_schedule(spec("b"), 1_000, 2_000))
    schedules.run(store.delete_schedule("b"))

    assert not schedules.run(store.advance_schedule("a", 2_000, 3_000, [2_000], "T@q"))
    assert not schedules.run(store.advance_schedule("b", 2_000, 3_000, [2_000], "T@q"))

    assert schedules.hash("a")["next"] == "2000"
    assert schedules.hash("b") == {}
    assert schedules.due() == []


"""Schedule tick arithmetic: intervals, cron in a time zone, the missed-tick plan and tick ulids."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from broker_service.domain import TASK_ID_PATTERN, NewTask
from broker_service.schedule import (
    MissedTicks,
    Schedule,
    ScheduleSpec,
    next_after,
    parse_cron,
    plan,
    tick_task,
    tick_ulid,
)

TEMPLATE = NewTask(ulid="", queue="q", name="tests.work", payload=b"{}")


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def every_second(missed: MissedTicks = MissedTicks.FIRE_ONCE) -> ScheduleSpec:
    return ScheduleSpec(id="s", task=TEMPLATE, interval_ms=1_000, missed=missed)


def test_interval_ticks_count_from_the_anchor() -> None:
    spec = ScheduleSpec(id="s", task=TEMPLATE, interval_ms=60_000)
    assert next_after(spec, 5_000, 5_000) == 65_000
    assert next_after(spec, 5_000, 64_999) == 65_000
    assert next_after(spec, 5_000, 65_000) == 125_000
    assert next_after(spec, 5_000, 0) == 65_000


def test_cron_is_read_in_its_time_zone() -> None:
    spec = ScheduleSpec(id="s", task=TEMPLATE, cron="30 9 * * *", time_zone="America/New_York")
    after = ms(datetime(2026, 7, 1, 12, 0, tzinfo=UTC))  # 08:00 in New York (EDT, UTC-4)
    assert next_after(spec, 0, after) == ms(datetime(2026, 7, 1, 13, 30, tzinfo=UTC))
    winter = ms(datetime(2026, 1, 5, 12, 0, tzinfo=UTC))  # 07:00 in New York (EST, UTC-5)
    assert next_after(spec, 0, winter) == ms(datetime(2026, 1, 5, 14, 30, tzinfo=UTC))


def test_cron_across_a_daylight_saving_change_keeps_local_time() -> None:
    spec = ScheduleSpec(id="s", task=TEMPLATE, cron="0 12 * * *", time_zone="Europe/Paris")
    paris = ZoneInfo("Europe/Paris")
    before = ms(datetime(2026, 3, 28, 13, 0, tzinfo=paris))
    assert next_after(spec, 0, before) == ms(datetime(2026, 3, 29, 12, 0, tzinfo=paris))
    assert next_after(spec, 0, before) - ms(datetime(2026, 3, 28, 12, 0, tzinfo=paris)) == 23 * 3_600_000


def test_a_six_field_cron_ticks_every_second() -> None:
    spec = ScheduleSpec(id="s", task=TEMPLATE, cron="* * * * * */1")
    assert next_after(spec, 0, 10_500) == 11_000
    assert next_after(spec, 0, 11_000) == 12_000


@pytest.mark.parametrize(("expression", "zone", "message"), [
    ("61 * * * *", "", "out of range"),
    ("* * *", "", "expected 5 fields"),
    ("", "", "must not be empty"),
    ("0 0 31 2 *", "", "never fires"),
    ("R * * * *", "", "random fields"),
    ("* * * * *", "Mars/Olympus", "unknown IANA time zone"),
])
def test_bad_cron_input_says_what_is_wrong(expression: str, zone: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_cron(expression, zone)


def test_month_and_day_names_are_not_taken_for_random_fields() -> None:
    parse_cron("0 9 * MAR-APR FRI", "")


def test_aliases_keep_their_meaning_and_h_spreads_schedules_by_id() -> None:
    hourly = ScheduleSpec(id="s", task=TEMPLATE, cron="@hourly")
    assert next_after(hourly, 0, 1_000) == 3_600_000
    spread = [next_after(ScheduleSpec(id=name, task=TEMPLATE, cron="H * * * *"), 0, 1_000) for name in "abcdef"]
    assert all(t % 60_000 == 0 and t <= 3_600_000 for t in spread) and len(set(spread)) > 1
    assert spread[0] == next_after(ScheduleSpec(id="a", task=TEMPLATE, cron="H * * * *"), 0, 1_000)


def schedule(spec: ScheduleSpec, next_ms: int, resumed_ms: int = 0) -> Schedule:
    return Schedule(spec=spec, next_fire_ms=next_ms, anchor_ms=0, resumed_ms=resumed_ms)


def test_a_due_tick_fires_and_the_next_one_follows_it() -> None:
    step = plan(schedule(every_second(), 10_000), now_ms=10_200, grace_ms=5_000)
    assert (step.fire, step.next_fire_ms, step.skipped) == ([10_000], 11_000, 0)


def test_ticks_merely_late_within_the_grace_all_fire() -> None:
    step = plan(schedule(every_second(), 10_000), now_ms=12_500, grace_ms=5_000)
    assert (step.fire, step.next_fire_ms, step.skipped) == ([10_000, 11_000, 12_000], 13_000, 0)


@pytest.mark.parametrize(("missed", "fired", "skipped"), [
    (MissedTicks.FIRE_ONCE, [14_000, 15_000, 16_000], 4),
    (MissedTicks.SKIP, [15_000, 16_000], 5),
    (MissedTicks.CATCH_UP, [10_000, 11_000, 12_000, 13_000, 14_000, 15_000, 16_000], 0),
])
def test_ticks_missed_past_the_grace_follow_the_policy(missed: MissedTicks, fired: list[int], skipped: int) -> None:
    step = plan(schedule(every_second(missed), 10_000), now_ms=16_200, grace_ms=1_500)
    assert (step.fire, step.next_fire_ms, step.skipped) == (fired, 17_000, skipped)


@pytest.mark.parametrize(("missed", "fired"), [
    (MissedTicks.FIRE_ONCE, [13_000]),
    (MissedTicks.SKIP, []),
    (MissedTicks.CATCH_UP, [10_000, 11_000, 12_000, 13_000]),
])
def test_every_tick_up_to_a_resume_was_missed_whatever_the_grace(missed: MissedTicks, fired: list[int]) -> None:
    step = plan(schedule(every_second(missed), 10_000, resumed_ms=13_100), now_ms=13_200, grace_ms=60_000)
    assert (step.fire, step.next_fire_ms) == (fired, 14_000)


def test_a_resume_stamped_after_the_pass_read_the_clock_still_marks_its_ticks_missed() -> None:
    step = plan(schedule(every_second(MissedTicks.FIRE_ONCE), 10_000, resumed_ms=13_100), now_ms=12_990,
                grace_ms=60_000)
    assert (step.fire, step.next_fire_ms) == ([13_000], 14_000)


def test_catch_up_submits_at_most_a_thousand_ticks() -> None:
    step = plan(schedule(every_second(MissedTicks.CATCH_UP), 0), now_ms=5_000_000, grace_ms=0)
    assert len(step.fire) == 1_000 and step.fire[-1] == 5_000_000 and step.skipped == 4_001


def test_a_schedule_not_yet_due_fires_nothing() -> None:
    assert plan(schedule(every_second(), 20_000), now_ms=19_999, grace_ms=0).fire == []


def test_a_tick_has_one_ulid_everywhere_ordered_by_tick() -> None:
    first, again = tick_ulid("s", 1_000), tick_ulid("s", 1_000)
    other, later = tick_ulid("t", 1_000), tick_ulid("s", 2_000)
    assert first == again != other
    assert first < later
    assert TASK_ID_PATTERN.fullmatch(f"{first}@q")


def test_a_tick_task_carries_the_schedule_and_its_idempotency_key() -> None:
    task = tick_task(every_second(), 7_000)
    assert task.ulid == tick_ulid("s", 7_000)
    assert task.idempotency_key == "schedule:s:7000"
    assert task.schedule_id == "s"
    assert (task.queue, task.name, task.payload) == ("q", "tests.work", b"{}")

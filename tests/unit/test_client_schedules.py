"""Schedules in the client SDK: the decorator's options, triggers, and the PutSchedule request built from them."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from client_sdk import MissedTicks, signature, task
from client_sdk._schedule_models import Trigger
from client_sdk._schedules import put_request


def test_the_decorator_works_bare_and_with_a_schedule() -> None:
    @task
    def plain() -> None: ...

    @task(name="maintenance.cleanup", queue="maintenance", cron="*/5 * * * *", timezone="Europe/Paris",
          missed="catch-up")
    def cleanup() -> None: ...

    @task(every=timedelta(minutes=1), schedule_id="minutely")
    def ping() -> None: ...

    assert plain.schedule is None and plain.schedule_id is None
    assert cleanup.schedule == Trigger(cron="*/5 * * * *", timezone="Europe/Paris", missed=MissedTicks.CATCH_UP)
    assert cleanup.schedule_id == "maintenance.cleanup"
    assert ping.schedule is not None and ping.schedule.every == 60.0 and ping.schedule_id == "minutely"
    assert cleanup.with_options(priority=3).schedule == cleanup.schedule


@pytest.mark.parametrize(("options", "error"), [
    ({"cron": "* * * * *", "every": 5}, "exactly one of cron and every"),
    ({"every": 0.5}, "at least 1 second"),
    ({"cron": "  "}, "non-empty"),
    ({"cron": "* * * * *", "missed": "sometimes"}, "unknown missed-tick policy"),
    ({"cron": "* * * * *", "schedule_id": "has space"}, "invalid schedule id"),
])
def test_bad_schedule_options_fail_at_decoration(options: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        task(**options)  # type: ignore[call-overload]


def test_a_task_name_that_is_no_schedule_id_needs_an_explicit_one() -> None:
    def local() -> None: ...

    with pytest.raises(ValueError, match="give schedule_id="):
        task(every=60)(local)  # its name holds "<locals>"
    assert task(every=60, schedule_id="ok")(local).schedule_id == "ok"


def test_a_scheduled_task_may_require_no_argument() -> None:
    def needs(x: int) -> None: ...

    with pytest.raises(ValueError, match="submitted without arguments"):
        task(every=60, schedule_id="s")(needs)


def test_missed_ticks_parse_every_spelling() -> None:
    for spelling in ("catch-up", "CATCH_UP", 3, MissedTicks.CATCH_UP):
        assert MissedTicks.parse(spelling) is MissedTicks.CATCH_UP
    assert MissedTicks.FIRE_ONCE.label == "fire-once"


def test_the_put_request_carries_the_signature_and_the_trigger() -> None:
    sig = signature("reports.build", 2026, kind="weekly").with_options(queue="reports", priority=5)
    request = put_request("weekly", sig, Trigger.of(cron="0 8 * * MON", timezone="Europe/Paris",
                                                    missed="skip", description="Monday report"))
    spec = request.schedule
    assert (spec.id, spec.cron, spec.time_zone, spec.missed_ticks, spec.description) == (
        "weekly", "0 8 * * MON", "Europe/Paris", 2, "Monday report")
    assert (spec.task.queue, spec.task.name, spec.task.priority) == ("reports", "reports.build", 5)
    assert json.loads(spec.task.payload) == {"args": [2026], "kwargs": {"kind": "weekly"}}
    every = put_request("often", "tests.noop", Trigger.of(every=timedelta(seconds=90))).schedule
    assert every.WhichOneof("trigger") == "interval" and every.interval.seconds == 90

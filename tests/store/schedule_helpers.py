"""Helpers of the schedule store tests: specs to put."""

from __future__ import annotations

from typing import Any

from broker_service.domain import NewTask
from broker_service.schedule import MissedTicks, ScheduleSpec


def spec(schedule_id: str = "nightly", *, cron: str = "", interval_ms: int = 0, **options: Any) -> ScheduleSpec:
    """An interval (default 1 s) or cron schedule submitting tests.work to queue q."""
    if not cron and not interval_ms:
        interval_ms = 1_000
    task = NewTask(ulid="", queue=options.pop("queue", "q"), name="tests.work", payload=b'{"args":[]}')
    return ScheduleSpec(id=schedule_id, task=task, cron=cron, interval_ms=interval_ms,
                        missed=options.pop("missed", MissedTicks.FIRE_ONCE), **options)

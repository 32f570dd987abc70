"""Plain Python views of schedules: the missed-tick policy, a trigger, and a schedule as the broker reports it."""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

__all__ = ["MissedTicks", "ScheduleInfo", "Trigger"]

SCHEDULE_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")


class MissedTicks(enum.IntEnum):
    """What a schedule does with ticks it missed (brokers down, or the schedule paused).

    The values are the wire values of conveyor.v1.MissedTicks.
    """

    FIRE_ONCE = 1
    """Submit once for all the missed ticks (the latest), then go on from now. The default."""
    SKIP = 2
    """Submit none of them; go on from the next tick after now."""
    CATCH_UP = 3
    """Submit every missed tick (at most 1,000), oldest first."""

    @property
    def label(self) -> str:
        """The name as the CLI spells it, e.g. ``"fire-once"``."""
        return self.name.lower().replace("_", "-")

    @classmethod
    def parse(cls, value: MissedTicks | str | int) -> MissedTicks:
        """Reads a policy given as a member, a name (``"catch-up"``, ``"CATCH_UP"``) or a wire number.

        Args:
            value: The policy to read.

        Returns:
            The matching member.

        Raises:
            ValueError: If no policy matches.
        """
        if isinstance(value, MissedTicks):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper().replace("-", "_")]
            except KeyError:
                names = ", ".join(m.label for m in cls)
                raise ValueError(f"unknown missed-tick policy {value!r}; expected one of {names}") from None
        return cls(value)


def _seconds(every: float | timedelta) -> float:
    if isinstance(every, timedelta):
        return every.total_seconds()
    if isinstance(every, bool) or not isinstance(every, int | float):
        raise TypeError(f"every must be a timedelta or a number of seconds, not {type(every).__name__}")
    return float(every)


@dataclass(frozen=True, slots=True)
class Trigger:
    """When a schedule fires: a cron expression (read in a time zone) or a fixed interval.

    Attributes:
        cron: Five fields (minute hour day month weekday), or six with seconds last; None for an
            interval.
        every: The interval in seconds (1 second to 366 days); None for a cron expression.
        timezone: IANA zone the cron expression is read in, e.g. ``"Europe/Paris"``; empty means UTC.
        missed: What to do with missed ticks.
        schedule_id: The schedule's id; None lets the user of the trigger choose (a task's name).
        description: Free text shown with the schedule.
    """

    cron: str | None = None
    every: float | None = None
    timezone: str = ""
    missed: MissedTicks = MissedTicks.FIRE_ONCE
    schedule_id: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ValueError("a schedule needs exactly one of cron and every")
        if self.cron is not None and (not isinstance(self.cron, str) or not self.cron.strip()):
            raise ValueError(f"cron must be a non-empty string, got {self.cron!r}")
        if self.every is not None:
            seconds = _seconds(self.every)
            if not math.isfinite(seconds) or seconds < 1:
                raise ValueError(f"every must be at least 1 second, got {self.every!r}")
            object.__setattr__(self, "every", seconds)
        if self.schedule_id is not None and not SCHEDULE_ID_PATTERN.fullmatch(self.schedule_id):
            raise ValueError(f"invalid schedule id {self.schedule_id!r}: 1 to 128 of A-Z a-z 0-9 _ . - :")
        object.__setattr__(self, "missed", MissedTicks.parse(self.missed))

    @classmethod
    def of(cls, *, cron: str | None = None, every: float | timedelta | None = None, timezone: str = "",
           missed: MissedTicks | str = MissedTicks.FIRE_ONCE, schedule_id: str | None = None,
           description: str = "") -> Trigger:
        """Builds a trigger, taking ``every`` as a timedelta or seconds.

        Raises:
            ValueError: If not exactly one of ``cron`` and ``every`` is given, or a value is out of range.
        """
        seconds = None if every is None else _seconds(every)
        return cls(cron=cron, every=seconds, timezone=timezone, missed=MissedTicks.parse(missed),
                   schedule_id=schedule_id, description=description)


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    """A schedule as the broker stores it, with Python types (UTC-aware datetimes, timedeltas).

    Attributes:
        id: Schedule id.
        task_name: Name of the task submitted at every tick.
        queue: Queue the task is submitted to.
        payload: The task's payload (JSON ``{"args": [...], "kwargs": {...}}`` from the SDK).
        content_type: Media type of ``payload``.
        headers: Headers of the task.
        priority: Priority of the task.
        cron: The cron expression, or None for an interval.
        every: The interval, or None for a cron expression.
        timezone: Zone of the cron expression (empty: UTC).
        missed: The missed-tick policy.
        description: Free text.
        paused: True while paused.
        next_fire_at: The next tick (None while paused).
        last_fire_at: The last tick that fired, or None before the first.
        last_task_id: Id of the task the last tick submitted.
        fire_count: Ticks fired so far.
        created_at: When the schedule was first created.
        updated_at: When it was last put, paused or resumed.
    """

    id: str
    task_name: str
    queue: str
    payload: bytes = b""
    content_type: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    priority: int = 0
    cron: str | None = None
    every: timedelta | None = None
    timezone: str = ""
    missed: MissedTicks = MissedTicks.FIRE_ONCE
    description: str = ""
    paused: bool = False
    next_fire_at: datetime | None = None
    last_fire_at: datetime | None = None
    last_task_id: str = ""
    fire_count: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None

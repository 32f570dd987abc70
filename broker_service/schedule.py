"""Periodic schedules: their spec and state, tick arithmetic (cron and intervals) and the missed-tick plan.

Pure functions of their arguments: no clock is read here. Every "now" is Redis TIME, read by the
caller, and every next tick is computed from the previous tick, so two replicas computing the
same schedule agree to the millisecond.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from broker_service.domain import _CROCKFORD, NewTask, StoreError

SCHEDULE_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
MIN_INTERVAL_MS = 1_000
MAX_INTERVAL_MS = 366 * 86_400_000
MAX_CATCH_UP = 1_000
# Ticks a pass walks one by one before it jumps (cron after a long downtime).
MAX_WALK = 10_000
# croniter's "R" picks a random value per instance: replicas would disagree on the next tick.
_RANDOM_FIELD = re.compile(r"(?<![A-Za-z])R(?![A-Za-z])")
# croniter's "H" hashes the schedule id into the field (spreads schedules over the hour, say).
# Given a hash id, croniter also hashes the @-aliases: pass it only when H is written out.
_HASHED_FIELD = re.compile(r"(?<![A-Za-z])H(?![A-Za-z])")


class MissedTicks(enum.IntEnum):
    """What a schedule does with ticks it missed; the numbers are the wire values of conveyor.v1.MissedTicks."""

    FIRE_ONCE = 1
    SKIP = 2
    CATCH_UP = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class ScheduleNotFoundError(StoreError):
    """No schedule with that id."""


class ScheduleChangedError(StoreError):
    """The schedule changed between reading it and acting on it."""


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """A validated schedule: which task to submit (a NewTask template, its ulid unset) and when.

    Exactly one of `cron` and `interval_ms` is set.
    """

    id: str
    task: NewTask
    cron: str = ""
    interval_ms: int = 0
    time_zone: str = ""
    missed: MissedTicks = MissedTicks.FIRE_ONCE
    description: str = ""

    @property
    def trigger(self) -> tuple[str, str, int]:
        """What decides the ticks; a put that keeps it keeps the next fire time."""
        return (self.cron, self.time_zone if self.cron else "", self.interval_ms)


@dataclass(slots=True)
class Schedule:
    """A schedule as stored. Times are Redis-clock milliseconds, 0 when unset."""

    spec: ScheduleSpec
    paused: bool = False
    next_fire_ms: int = 0
    anchor_ms: int = 0  # intervals tick at anchor + k * interval
    last_fire_ms: int = 0
    last_task_id: str = ""
    fire_count: int = 0
    created_ms: int = 0
    updated_ms: int = 0
    resumed_ms: int = 0  # ticks up to here were missed while paused

    @property
    def id(self) -> str:
        return self.spec.id


@dataclass(frozen=True, slots=True)
class Plan:
    """What one pass does with a due schedule: the ticks it submits, where it goes next."""

    fire: list[int] = field(default_factory=list)
    next_fire_ms: int = 0
    skipped: int = 0


def parse_cron(expression: str, time_zone: str, schedule_id: str = "") -> None:
    """Checks a cron expression read in `time_zone` (checked first); raises ValueError saying what is wrong."""
    zone(time_zone)
    text = expression.strip()
    if not text:
        raise ValueError("must not be empty")
    if not text.startswith("@") and len(text.split()) not in (5, 6):
        raise ValueError(f"expected 5 fields (minute hour day month weekday) or 6 (seconds last), "
                         f"got {len(text.split())}")
    if _RANDOM_FIELD.search(text):
        raise ValueError("random fields (R) are not supported: every broker must compute the same ticks")
    try:
        _iterator(text, time_zone, 0, schedule_id).get_next(datetime)
    except CroniterBadDateError:
        raise ValueError(f"{expression!r} never fires") from None
    except (CroniterError, ValueError, KeyError, IndexError) as exc:
        raise ValueError(f"invalid cron expression {expression!r}: {exc}") from None


def zone(name: str) -> ZoneInfo:
    """The IANA zone `name` (UTC when empty); ValueError when unknown."""
    if not name:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown IANA time zone {name[:100]!r}") from None


def _iterator(expression: str, time_zone: str, after_ms: int, schedule_id: str) -> croniter:
    start = datetime.fromtimestamp(after_ms / 1000, tz=UTC).astimezone(zone(time_zone))
    hashed = schedule_id and _HASHED_FIELD.search(expression)
    return croniter(expression, start, hash_id=schedule_id.encode() if hashed else None)


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def next_after(spec: ScheduleSpec, anchor_ms: int, after_ms: int) -> int:
    """The first tick strictly after `after_ms`."""
    if spec.interval_ms:
        if after_ms < anchor_ms:
            return anchor_ms + spec.interval_ms
        return anchor_ms + (((after_ms - anchor_ms) // spec.interval_ms) + 1) * spec.interval_ms
    return _ms(_iterator(spec.cron, spec.time_zone, after_ms, spec.id).get_next(datetime))


def ticks_between(spec: ScheduleSpec, anchor_ms: int, first_ms: int, last_ms: int, limit: int) -> list[int]:
    """Ticks from `first_ms` (a tick) to `last_ms` inclusive, oldest first; the newest `limit` of them."""
    if first_ms > last_ms or limit <= 0:
        return []
    if spec.interval_ms:
        count = (last_ms - first_ms) // spec.interval_ms + 1
        start = max(0, count - limit)
        return [first_ms + k * spec.interval_ms for k in range(start, count)]
    found: list[int] = []
    it = _iterator(spec.cron, spec.time_zone, last_ms + 1, spec.id)
    while len(found) < limit:
        tick = _ms(it.get_prev(datetime))
        if tick < first_ms:
            break
        found.append(tick)
    found.reverse()
    return found


def count_ticks(spec: ScheduleSpec, anchor_ms: int, first_ms: int, last_ms: int) -> int:
    """How many ticks from `first_ms` (a tick) to `last_ms` inclusive (cron: at most MAX_WALK)."""
    if first_ms > last_ms:
        return 0
    if spec.interval_ms:
        return (last_ms - first_ms) // spec.interval_ms + 1
    return len(ticks_between(spec, anchor_ms, first_ms, last_ms, MAX_WALK))


def plan(schedule: Schedule, now_ms: int, grace_ms: int) -> Plan:
    """What to submit for a due schedule at `now_ms`, and its next tick after that.

    Ticks up to `now_ms - grace_ms`, and ticks up to the moment the schedule was last resumed, were
    missed and follow the schedule's policy: FIRE_ONCE submits the latest of them, SKIP none,
    CATCH_UP each (the newest MAX_CATCH_UP, oldest first). Later ticks are merely late (a slow
    pass) and each is submitted.
    """
    spec, anchor, first = schedule.spec, schedule.anchor_ms, schedule.next_fire_ms
    # A resume stamped after the pass read the clock has happened all the same: that later
    # reading of the same clock is "now" too, so every tick up to the resume counts as missed.
    now_ms = max(now_ms, schedule.resumed_ms)
    if first > now_ms:
        return Plan([], first, 0)
    following = next_after(spec, anchor, now_ms)
    cutoff = min(now_ms, max(now_ms - grace_ms, schedule.resumed_ms))
    if first > cutoff:
        return Plan(ticks_between(spec, anchor, first, now_ms, MAX_CATCH_UP), following, 0)
    late = ticks_between(spec, anchor, next_after(spec, anchor, cutoff), now_ms, MAX_CATCH_UP)
    missed_count = count_ticks(spec, anchor, first, cutoff)
    if spec.missed is MissedTicks.SKIP:
        kept: list[int] = []
    elif spec.missed is MissedTicks.CATCH_UP:
        kept = ticks_between(spec, anchor, first, cutoff, MAX_CATCH_UP)
    else:
        kept = ticks_between(spec, anchor, first, cutoff, 1)
    return Plan(kept + late, following, missed_count - len(kept))


def tick_ulid(schedule_id: str, tick_ms: int) -> str:
    """The ulid of a tick's task: its time part is the tick, the rest a hash of (schedule, tick).

    Every replica derives the same ulid, so submitting a tick twice finds the first task.
    """
    digest = hashlib.blake2b(f"{schedule_id}\0{tick_ms}".encode(), digest_size=10).digest()
    value = ((tick_ms & (2**48 - 1)) << 80) | int.from_bytes(digest, "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def idempotency_key(schedule_id: str, tick_ms: int) -> str:
    return f"schedule:{schedule_id}:{tick_ms}"


def tick_task(spec: ScheduleSpec, tick_ms: int) -> NewTask:
    """The task one tick submits: the template with the tick's ulid, keys and schedule id."""
    t = spec.task
    return NewTask(
        ulid=tick_ulid(spec.id, tick_ms), queue=t.queue, name=t.name, payload=t.payload,
        content_type=t.content_type, headers=dict(t.headers), priority=t.priority, retry=t.retry,
        timeout_ms=t.timeout_ms, lease_ms=t.lease_ms, start_timeout_ms=t.start_timeout_ms,
        result_ttl_ms=t.result_ttl_ms, idempotency_key=idempotency_key(spec.id, tick_ms),
        idempotency_ttl_ms=t.idempotency_ttl_ms, unique_key=t.unique_key, concurrency_key=t.concurrency_key,
        concurrency_limit=t.concurrency_limit, schedule_id=spec.id,
    )

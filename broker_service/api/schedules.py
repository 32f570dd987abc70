"""Schedules at the API edge: ScheduleSpec checked into a domain spec, Schedule messages built back."""

from __future__ import annotations

import base64
import binascii

from conveyor.v1 import admin_service_pb2 as adm
from conveyor.v1 import task_pb2
from conveyor.v1 import task_service_pb2 as ts

from broker_service.api import validate
from broker_service.api.convert import duration, timestamp
from broker_service.api.errors import invalid_argument
from broker_service.domain import DEFAULT_CONTENT_TYPE, NewTask
from broker_service.schedule import (
    MAX_INTERVAL_MS,
    MIN_INTERVAL_MS,
    SCHEDULE_ID_PATTERN,
    MissedTicks,
    Schedule,
    ScheduleSpec,
    next_after,
    parse_cron,
    zone,
)

MAX_DESCRIPTION = 1024
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


def schedule_id(value: str, field: str = "id") -> str:
    if not SCHEDULE_ID_PATTERN.fullmatch(value):
        raise invalid_argument(field, "must be 1 to 128 characters of letters, digits, '_', '-', '.' and ':'")
    return value


def spec(message: adm.ScheduleSpec, limits: validate.Limits, now_ms: int, path: str = "schedule") -> ScheduleSpec:
    """Checks a ScheduleSpec; every bad field is INVALID_ARGUMENT naming it (`schedule.cron`...)."""
    sid = schedule_id(message.id, f"{path}.id")
    template = _template(message, limits, now_ms, path)
    if len(message.description) > MAX_DESCRIPTION:
        raise invalid_argument(f"{path}.description", f"at most {MAX_DESCRIPTION} characters")
    try:
        missed = MissedTicks(message.missed_ticks or MissedTicks.FIRE_ONCE)
    except ValueError:
        raise invalid_argument(f"{path}.missed_ticks", f"unknown missed-tick policy {message.missed_ticks}") from None
    cron, interval_ms = _trigger(message, sid, path)
    return ScheduleSpec(id=sid, task=template, cron=cron, interval_ms=interval_ms,
                        time_zone=message.time_zone if cron else "", missed=missed,
                        description=message.description)


def _template(message: adm.ScheduleSpec, limits: validate.Limits, now_ms: int, path: str) -> NewTask:
    if not message.HasField("task"):
        raise invalid_argument(f"{path}.task", "required: the task submitted at every tick")
    for name in ("run_at", "delay"):
        if message.task.HasField(name):
            raise invalid_argument(f"{path}.task.{name}", "must be unset: a schedule's task runs at its tick")
    if message.task.idempotency_key:
        raise invalid_argument(f"{path}.task.idempotency_key",
                               "must be unset: each tick's task gets the key schedule:<id>:<tick ms>")
    task = validate.task_spec(message.task, f"{path}.task", limits, now_ms)
    return NewTask(ulid="", queue=task.queue, name=task.name, payload=task.payload,
                   content_type=task.content_type, headers=task.headers, priority=task.priority,
                   retry=task.retry, timeout_ms=task.timeout_ms, lease_ms=task.lease_ms,
                   start_timeout_ms=task.start_timeout_ms, result_ttl_ms=task.result_ttl_ms,
                   idempotency_ttl_ms=task.idempotency_ttl_ms, unique_key=task.unique_key,
                   concurrency_key=task.concurrency_key, concurrency_limit=task.concurrency_limit)


def _trigger(message: adm.ScheduleSpec, sid: str, path: str) -> tuple[str, int]:
    """(cron, interval ms) of the spec: exactly one is set."""
    try:
        zone(message.time_zone)
    except ValueError as exc:
        raise invalid_argument(f"{path}.time_zone", str(exc)) from None
    which = message.WhichOneof("trigger")
    if which == "cron":
        cron = message.cron.strip()
        try:
            parse_cron(cron, message.time_zone, sid)
        except ValueError as exc:
            raise invalid_argument(f"{path}.cron", str(exc)) from None
        return cron, 0
    if which == "interval":
        value = message.interval
        if value.seconds < 0 or value.nanos < 0:
            raise invalid_argument(f"{path}.interval", "must not be negative")
        interval_ms = validate.duration_ms(value)
        if not MIN_INTERVAL_MS <= interval_ms <= MAX_INTERVAL_MS:
            raise invalid_argument(f"{path}.interval", "must be between 1 second and 366 days")
        return "", interval_ms
    raise invalid_argument(f"{path}.cron", "a trigger is required: set `cron` or `interval`")


def first_tick(value: ScheduleSpec, now_ms: int) -> int:
    """The first tick after `now_ms` of a new trigger (an interval counts from `now_ms`)."""
    return next_after(value, now_ms, now_ms)


def page_size(value: int) -> int:
    if value > MAX_PAGE_SIZE:
        raise invalid_argument("page_size", f"at most {MAX_PAGE_SIZE}")
    return value or DEFAULT_PAGE_SIZE


def page_after(token: str) -> str:
    """The schedule id a ListSchedules page token says to list on from ('' for the first page)."""
    if not token:
        return ""
    try:
        after = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        after = ""
    if not SCHEDULE_ID_PATTERN.fullmatch(after):
        raise invalid_argument("page_token", "malformed: pass a next_page_token as it came")
    return after


def page_token(last_id: str) -> str:
    """The page token that lists on after `last_id` ('' when there is no next page)."""
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=") if last_id else ""


def _task_spec(task: NewTask) -> ts.TaskSpec:
    retry = task.retry
    message = ts.TaskSpec(
        queue=task.queue, name=task.name, payload=task.payload,
        content_type="" if task.content_type == DEFAULT_CONTENT_TYPE else task.content_type,
        headers=task.headers, priority=task.priority,
        retry_policy=task_pb2.RetryPolicy(max_attempts=retry.max_attempts,
                                          initial_backoff=duration(retry.initial_backoff_ms),
                                          max_backoff=duration(retry.max_backoff_ms),
                                          multiplier=retry.multiplier, jitter=retry.jitter),
        execution_timeout=duration(task.timeout_ms), lease_duration=duration(task.lease_ms),
        schedule_to_start_timeout=duration(task.start_timeout_ms), result_ttl=duration(task.result_ttl_ms),
        unique_key=task.unique_key, concurrency_key=task.concurrency_key,
        concurrency_limit=task.concurrency_limit,
    )
    if task.idempotency_ttl_ms != NewTask.__dataclass_fields__["idempotency_ttl_ms"].default:
        message.idempotency_ttl.CopyFrom(duration(task.idempotency_ttl_ms))
    return message


def schedule(value: Schedule) -> adm.Schedule:
    """A Schedule message."""
    s = value.spec
    message_spec = adm.ScheduleSpec(id=s.id, task=_task_spec(s.task), time_zone=s.time_zone,
                                    missed_ticks=int(s.missed), description=s.description)
    if s.cron:
        message_spec.cron = s.cron
    else:
        message_spec.interval.CopyFrom(duration(s.interval_ms))
    return adm.Schedule(
        spec=message_spec, paused=value.paused,
        next_fire_at=None if value.paused else timestamp(value.next_fire_ms),
        last_fire_at=timestamp(value.last_fire_ms), last_task_id=value.last_task_id,
        fire_count=value.fire_count, created_at=timestamp(value.created_ms),
        updated_at=timestamp(value.updated_ms),
    )

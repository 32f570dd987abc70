"""Protobuf at the SDK's edge, for schedules: PutSchedule requests built, Schedule messages read back."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from conveyor.v1 import admin_service_pb2 as adm
from google.protobuf import timestamp_pb2

from client_sdk import _convert
from client_sdk._schedule_models import MissedTicks, ScheduleInfo, Trigger
from client_sdk._task import Signature, TaskDefinition


def put_request(schedule_id: str, target: TaskDefinition[Any, Any] | Signature | str,
                trigger: Trigger) -> adm.PutScheduleRequest:
    """The PutSchedule request of a task (its arguments as a signature holds them) and a trigger.

    Raises:
        ValueError: If the signature carries a delay or run_at (a tick decides when it runs).
    """
    sig = _convert.to_signature(target, (), {})
    if sig.options.delay is not None or sig.options.run_at is not None:
        raise ValueError("a scheduled task cannot have a delay or run_at: its tick decides when it runs")
    spec = adm.ScheduleSpec(id=schedule_id, task=_convert.signature_spec(sig), time_zone=trigger.timezone,
                            missed_ticks=int(trigger.missed), description=trigger.description)
    if trigger.cron is not None:
        spec.cron = trigger.cron
    else:
        spec.interval.CopyFrom(_convert.duration(trigger.every or 0.0))
    return adm.PutScheduleRequest(schedule=spec)


def _time(message: adm.Schedule, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    value: timestamp_pb2.Timestamp = getattr(message, name)
    return value.ToDatetime(tzinfo=UTC)


def _missed(value: int) -> MissedTicks:
    try:
        return MissedTicks(value or MissedTicks.FIRE_ONCE)
    except ValueError:
        return MissedTicks.FIRE_ONCE


def schedule_info(message: adm.Schedule) -> ScheduleInfo:
    """A ScheduleInfo of a conveyor.v1.Schedule."""
    spec = message.spec
    task = spec.task
    which = spec.WhichOneof("trigger")
    return ScheduleInfo(
        id=spec.id, task_name=task.name, queue=task.queue, payload=task.payload,
        content_type=task.content_type or _convert.JSON_CONTENT_TYPE, headers=dict(task.headers),
        priority=task.priority, cron=spec.cron if which == "cron" else None,
        every=spec.interval.ToTimedelta() if which == "interval" else None, timezone=spec.time_zone,
        missed=_missed(spec.missed_ticks), description=spec.description, paused=message.paused,
        next_fire_at=_time(message, "next_fire_at"), last_fire_at=_time(message, "last_fire_at"),
        last_task_id=message.last_task_id, fire_count=message.fire_count,
        created_at=_time(message, "created_at"), updated_at=_time(message, "updated_at"),
    )

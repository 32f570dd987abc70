"""Schedules as stored: the task template as JSON and the schedule hash read back into a Schedule."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from broker_service.domain import NewTask, RetryPolicy
from broker_service.schedule import MissedTicks, Schedule, ScheduleSpec
from broker_service.store.records import text

# NewTask fields a tick sets itself, never taken from the template.
_PER_TICK = frozenset({"ulid", "run_at_ms", "delay_ms", "idempotency_key", "schedule_id", "workflow_id",
                       "workflow_node", "parent_ids", "result_passing"})
_TEMPLATE_FIELDS = tuple(f for f in dataclasses.fields(NewTask) if f.name not in _PER_TICK)


def template_json(task: NewTask) -> str:
    """The task template as compact JSON: fields left at their default are left out."""
    out: dict[str, Any] = {}
    blank = NewTask(ulid="", queue="", name="")
    for f in _TEMPLATE_FIELDS:
        value = getattr(task, f.name)
        if f.name not in ("queue", "name") and value == getattr(blank, f.name):
            continue
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode("ascii")
        elif isinstance(value, RetryPolicy):
            value = dataclasses.asdict(value)
        out[f.name] = value
    return json.dumps(out, separators=(",", ":"), sort_keys=True)


def template_from_json(raw: str) -> NewTask:
    """The NewTask template of `template_json`'s output (ulid empty); unknown names are ignored."""
    data = json.loads(raw)
    known = {f.name for f in _TEMPLATE_FIELDS}
    values: dict[str, Any] = {k: v for k, v in data.items() if k in known}
    if "payload" in values:
        values["payload"] = base64.b64decode(values["payload"])
    if "retry" in values:
        values["retry"] = RetryPolicy(**values["retry"])
    values.setdefault("queue", "")
    values.setdefault("name", "")
    return NewTask(ulid="", **values)


def _int(value: bytes | str | None) -> int:
    return int(text(value) or 0)


def schedule_from_hash(schedule_id: str, raw: Mapping[Any, Any]) -> Schedule:
    """A Schedule from its hash (HGETALL)."""
    fields = {text(k): text(v) for k, v in raw.items()}
    spec = ScheduleSpec(
        id=schedule_id,
        task=template_from_json(fields.get("task") or "{}"),
        cron=fields.get("cron", ""),
        interval_ms=_int(fields.get("every")),
        time_zone=fields.get("tz", ""),
        missed=MissedTicks(_int(fields.get("missed")) or MissedTicks.FIRE_ONCE),
        description=fields.get("desc", ""),
    )
    return Schedule(
        spec=spec,
        paused=fields.get("paused") == "1",
        next_fire_ms=_int(fields.get("next")),
        anchor_ms=_int(fields.get("anchor")),
        last_fire_ms=_int(fields.get("last")),
        last_task_id=fields.get("last_task", ""),
        fire_count=_int(fields.get("fires")),
        created_ms=_int(fields.get("created")),
        updated_ms=_int(fields.get("updated")),
        resumed_ms=_int(fields.get("resumed")),
    )


def schedule_from_reply(schedule_id: str, flat: Sequence[Any]) -> Schedule:
    """A Schedule from a script's flat {field, value, ...} reply."""
    return schedule_from_hash(schedule_id, {text(flat[i]): text(flat[i + 1]) for i in range(0, len(flat), 2)})

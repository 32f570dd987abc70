"""Request validation: every bad field becomes INVALID_ARGUMENT naming its path, before anything is stored."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from conveyor.v1 import admin_service_pb2 as adm
from conveyor.v1 import task_service_pb2 as ts
from google.protobuf import duration_pb2

from broker_service.api.errors import invalid_argument
from broker_service.domain import (
    DEFAULT_CONTENT_TYPE,
    QUEUE_PATTERN,
    NewTask,
    QueueLimits,
    RetryPolicy,
    TaskState,
    new_ulid,
    parse_task_id,
)

TEN_YEARS_MS = 10 * 366 * 86_400_000
MAX_NAME = 256
MAX_HEADERS = 64
MAX_HEADER_KEY = 128
MAX_HEADER_VALUE = 4096
MAX_CONTENT_TYPE = 128
MAX_ATTEMPTS = 1000
MAX_REASON = 1024
MAX_KEY = 256
MAX_CONCURRENCY_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class Limits:
    """The broker's limits and defaults that validation applies."""

    max_payload_bytes: int
    max_batch_size: int
    lease_ms: int
    result_ttl_ms: int
    max_attempts: int


def duration_ms(value: duration_pb2.Duration) -> int:
    return value.seconds * 1000 + value.nanos // 1_000_000


def _duration(spec: ts.TaskSpec, name: str, path: str, *, low_ms: int, high_ms: int) -> int | None:
    """A set Duration field as ms within [low, high], or None when unset."""
    if not spec.HasField(name):
        return None
    value = getattr(spec, name)
    if value.seconds < 0 or value.nanos < 0:
        raise invalid_argument(f"{path}.{name}", "must not be negative")
    ms = duration_ms(value)
    if not low_ms <= ms <= high_ms:
        raise invalid_argument(f"{path}.{name}", f"must be between {low_ms / 1000:g}s and {high_ms / 1000:g}s")
    return ms


def queue_name(value: str, field: str) -> str:
    if not QUEUE_PATTERN.fullmatch(value):
        raise invalid_argument(field, "must be 1 to 128 characters of letters, digits, '_', '-' and '.'")
    return value


def task_id(value: str, field: str = "task_id") -> tuple[str, str]:
    try:
        return parse_task_id(value)
    except ValueError:
        raise invalid_argument(field, "malformed task id: expected '<26-character ULID>@<queue>'") from None


def state(value: int, field: str = "state") -> TaskState:
    try:
        return TaskState(value)
    except ValueError:
        raise invalid_argument(field, f"unknown or unspecified task state {value}") from None


def reason(value: str, field: str = "reason") -> str:
    if len(value) > MAX_REASON:
        raise invalid_argument(field, f"at most {MAX_REASON} characters")
    return value


def _name(value: str, field: str) -> str:
    if not 1 <= len(value) <= MAX_NAME or not value.isprintable() or any(c.isspace() for c in value):
        raise invalid_argument(field, f"must be 1 to {MAX_NAME} printable characters without spaces")
    return value


def _headers(spec: ts.TaskSpec, path: str) -> dict[str, str]:
    if len(spec.headers) > MAX_HEADERS:
        raise invalid_argument(f"{path}.headers", f"at most {MAX_HEADERS} entries")
    for key, value in spec.headers.items():
        if not 1 <= len(key) <= MAX_HEADER_KEY:
            raise invalid_argument(f"{path}.headers", f"keys must be 1 to {MAX_HEADER_KEY} characters")
        if len(value) > MAX_HEADER_VALUE:
            raise invalid_argument(f"{path}.headers[{key[:40]}]", f"at most {MAX_HEADER_VALUE} characters")
    return dict(spec.headers)


def _retry(spec: ts.TaskSpec, path: str, limits: Limits) -> RetryPolicy:
    if not spec.HasField("retry_policy"):
        return RetryPolicy(max_attempts=limits.max_attempts)
    policy = spec.retry_policy
    p = f"{path}.retry_policy"
    if policy.max_attempts > MAX_ATTEMPTS:
        raise invalid_argument(f"{p}.max_attempts", f"at most {MAX_ATTEMPTS}")
    if policy.multiplier != 0 and not 1 <= policy.multiplier <= 100:
        raise invalid_argument(f"{p}.multiplier", "must be 0 (default) or between 1 and 100")
    if not 0 <= policy.jitter <= 1:
        raise invalid_argument(f"{p}.jitter", "must be between 0 and 1")
    backoff = {}
    for name in ("initial_backoff", "max_backoff"):
        if policy.HasField(name):
            value = getattr(policy, name)
            if value.seconds < 0 or value.nanos < 0:
                raise invalid_argument(f"{p}.{name}", "must not be negative")
            backoff[name] = min(duration_ms(value), TEN_YEARS_MS)
    defaults = RetryPolicy()
    return RetryPolicy(
        max_attempts=policy.max_attempts or limits.max_attempts,
        initial_backoff_ms=backoff.get("initial_backoff", defaults.initial_backoff_ms),
        max_backoff_ms=backoff.get("max_backoff", defaults.max_backoff_ms),
        multiplier=policy.multiplier or defaults.multiplier,
        jitter=policy.jitter,
    )


# NewTask's fields after `payload`, in order: what submissions that differ only in payload share.
_SHARED_FIELDS = tuple(f.name for f in dataclasses.fields(NewTask))[4:]
assert tuple(f.name for f in dataclasses.fields(NewTask))[:4] == ("ulid", "queue", "name", "payload")


# What checking a TaskSpec found, by the spec's bytes without its payload (and the broker's
# limits): a submit of a task with options seen before is checked by its payload alone, at a
# sixth of the cost. Bounded: emptied when full.
_Shape = tuple[str, str, tuple[Any, ...]]
_SHAPES: dict[tuple[Limits, bytes], _Shape] = {}
_MAX_SHAPES = 1024
_scratch = ts.TaskSpec()


def _shape(task: NewTask) -> _Shape:
    """What tasks that differ from `task` only in ulid and payload share with it."""
    return task.queue, task.name, tuple(getattr(task, f) for f in _SHARED_FIELDS)


def submitted_task(spec: ts.TaskSpec, path: str, limits: Limits, now_ms: int, *, ulid: str = "") -> NewTask:
    """`task_spec`, remembering what it found for the next spec that differs only in its payload."""
    _scratch.CopyFrom(spec)
    _scratch.ClearField("payload")
    key = (limits, _scratch.SerializeToString(deterministic=True))
    known = _SHAPES.get(key)
    if known is None:
        task = task_spec(spec, path, limits, now_ms, ulid=ulid)
        if len(_SHAPES) >= _MAX_SHAPES:
            _SHAPES.clear()
        # a run_at checked against an earlier clock stays within ten years of a later one
        _SHAPES[key] = _shape(task)
        return task
    payload = spec.payload
    _payload(payload, path, limits)
    queue, name, shared = known
    return NewTask(ulid or new_ulid(), queue, name, payload, *shared)


def task_specs(specs: Sequence[ts.TaskSpec], path: str, limits: Limits, now_ms: int) -> list[NewTask]:
    """Checks a batch of TaskSpecs; `path` prefixes field names as `path[i]` ("tasks[3].name").

    Specs that differ only in their payload (a batch of one task over many arguments) are
    checked once (see submitted_task).
    """
    return [submitted_task(spec, f"{path}[{i}]", limits, now_ms, ulid=ulid)
            for i, (spec, ulid) in enumerate(zip(specs, new_ulid.many(len(specs)), strict=True))]


def template_tasks(template: ts.TaskSpec, payloads: Sequence[bytes], limits: Limits,
                   now_ms: int) -> list[NewTask]:
    """Checks the `template` and `payloads` of a BatchEnqueueTasksRequest: one task per payload."""
    if template.payload:
        raise invalid_argument("template.payload", "must be empty: `payloads` holds one per task")
    task = task_spec(template, "template", limits, now_ms)
    if max(map(len, payloads), default=0) > limits.max_payload_bytes:
        i = next(i for i, payload in enumerate(payloads) if len(payload) > limits.max_payload_bytes)
        raise invalid_argument(f"payloads[{i}]", f"{len(payloads[i])} bytes is over the limit of "
                               f"{limits.max_payload_bytes} bytes")
    queue, name, shared = _shape(task)
    return [NewTask(ulid, queue, name, payload, *shared)
            for ulid, payload in zip(new_ulid.many(len(payloads)), payloads, strict=True)]


def _payload(payload: bytes, path: str, limits: Limits) -> None:
    if len(payload) > limits.max_payload_bytes:
        raise invalid_argument(f"{path}.payload", f"{len(payload)} bytes is over the limit of "
                               f"{limits.max_payload_bytes} bytes")


def task_spec(spec: ts.TaskSpec, path: str, limits: Limits, now_ms: int, *, ulid: str = "") -> NewTask:
    """Checks one TaskSpec and turns it into a NewTask (with `ulid`, or a new one); `path`
    prefixes field names ("task", "tasks[3]")."""
    queue = queue_name(spec.queue, f"{path}.queue")
    name = _name(spec.name, f"{path}.name")
    _payload(spec.payload, path, limits)
    if len(spec.content_type) > MAX_CONTENT_TYPE or not spec.content_type.isprintable():
        raise invalid_argument(f"{path}.content_type", f"at most {MAX_CONTENT_TYPE} printable characters")
    if spec.priority > 9:
        raise invalid_argument(f"{path}.priority", "must be between 0 and 9")
    run_at_ms: int | None = None
    delay_ms = 0
    which = spec.WhichOneof("schedule")
    if which == "run_at":
        run_at_ms = spec.run_at.seconds * 1000 + spec.run_at.nanos // 1_000_000
        if run_at_ms > now_ms + TEN_YEARS_MS:
            raise invalid_argument(f"{path}.run_at", "more than 10 years ahead")
    elif which == "delay":
        delay_ms = _duration(spec, "delay", path, low_ms=0, high_ms=TEN_YEARS_MS) or 0
    day = 86_400_000
    concurrency_key = _key(spec.concurrency_key, f"{path}.concurrency_key")
    if spec.concurrency_limit > MAX_CONCURRENCY_LIMIT:
        raise invalid_argument(f"{path}.concurrency_limit", f"must be between 0 and {MAX_CONCURRENCY_LIMIT}")
    return NewTask(
        ulid=ulid or new_ulid(),
        queue=queue,
        name=name,
        payload=spec.payload,
        content_type=spec.content_type or DEFAULT_CONTENT_TYPE,
        headers=_headers(spec, path),
        priority=spec.priority,
        run_at_ms=run_at_ms,
        delay_ms=delay_ms,
        retry=_retry(spec, path, limits),
        timeout_ms=_duration(spec, "execution_timeout", path, low_ms=0, high_ms=365 * day) or 0,
        lease_ms=_duration(spec, "lease_duration", path, low_ms=1000, high_ms=3_600_000) or limits.lease_ms,
        start_timeout_ms=_duration(spec, "schedule_to_start_timeout", path, low_ms=0, high_ms=365 * day) or 0,
        result_ttl_ms=_duration(spec, "result_ttl", path, low_ms=1000, high_ms=90 * day) or limits.result_ttl_ms,
        idempotency_key=_key(spec.idempotency_key, f"{path}.idempotency_key"),
        idempotency_ttl_ms=_duration(spec, "idempotency_ttl", path, low_ms=1000, high_ms=30 * day) or day,
        unique_key=_key(spec.unique_key, f"{path}.unique_key"),
        concurrency_key=concurrency_key,
        concurrency_limit=(spec.concurrency_limit or 1) if concurrency_key else 0,
    )


def _key(value: str, field: str) -> str:
    """An idempotency, unique or concurrency key: empty (none) or 1 to 256 printable characters."""
    if len(value) > MAX_KEY or not value.isprintable():
        raise invalid_argument(field, f"at most {MAX_KEY} printable characters")
    return value


# Queue limits.
MAX_RUNNING_LIMIT = 1_000_000
MAX_RATE = 1_000_000.0
MAX_BURST = 1_000_000


def queue_limits(limits: adm.QueueLimits, path: str) -> QueueLimits:
    """Checks a QueueLimits message; `path` prefixes field names ("limits")."""
    if limits.max_running > MAX_RUNNING_LIMIT:
        raise invalid_argument(f"{path}.max_running", f"must be between 0 and {MAX_RUNNING_LIMIT}")
    rate = limits.rate_per_second
    if not 0 <= rate <= MAX_RATE:  # NaN fails too
        raise invalid_argument(f"{path}.rate_per_second", f"must be between 0 and {MAX_RATE:g}")
    if limits.rate_burst > MAX_BURST:
        raise invalid_argument(f"{path}.rate_burst", f"must be between 0 and {MAX_BURST}")
    return QueueLimits(max_running=limits.max_running, rate_per_second=rate,
                       rate_burst=limits.rate_burst if rate > 0 else 0)

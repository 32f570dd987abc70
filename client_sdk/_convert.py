"""Protobuf at the SDK's edge: requests built from signatures and options, Task records read back."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from conveyor.v1 import task_pb2, task_service_pb2
from google.protobuf import duration_pb2, timestamp_pb2

from client_sdk._errors import (
    ConveyorError,
    InvalidArgumentError,
    TaskCancelledError,
    TaskExpiredError,
    TaskFailedError,
    TaskTimeoutError,
)
from client_sdk._models import RemoteError, RetryPolicy, TaskInfo, TaskState
from client_sdk._task import Signature, TaskDefinition, TaskOptions, signature

JSON_CONTENT_TYPE = "application/json"
# Compact, and NaN or infinities refused (JSON has none): made once, not per call.
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
MAX_BATCH_SIZE = 10_000
# Leaves headroom under the 64 MiB message limit for the envelope of each task.
MAX_BATCH_BYTES = 48 << 20


def duration(seconds: float) -> duration_pb2.Duration:
    """A Duration of `seconds`, to the nanosecond."""
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    """A Timestamp of an aware datetime."""
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(moment.astimezone(UTC))
    return value


def _argument_error(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception) -> TypeError:
    labelled = [(f"positional argument {i}", a) for i, a in enumerate(args)]
    labelled += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in labelled:
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as inner:
            return TypeError(f"task {name!r}: {label} is not JSON-serialisable "
                             f"({type(value).__name__}): {inner}")
    return TypeError(f"task {name!r}: arguments are not JSON-serialisable: {exc}")


def encode_arguments(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Encodes task arguments as ``{"args": [...], "kwargs": {...}}`` JSON.

    Raises:
        TypeError: Naming the first argument JSON cannot encode (NaN and infinities included).
    """
    try:
        text = _JSON.encode({"args": list(args), "kwargs": kwargs})
    except (TypeError, ValueError) as exc:
        raise _argument_error(name, args, kwargs, exc) from None
    return text.encode()


def is_json(content_type: str) -> bool:
    """True for an empty content type (the wire default), application/json and any +json type."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("", JSON_CONTENT_TYPE) or media.endswith("+json")


def task_spec(name: str, payload: bytes, content_type: str, options: TaskOptions) -> task_service_pb2.TaskSpec:
    """The TaskSpec of one submission.

    Submissions of one task with the same options differ only in their payload: the rest is
    built once and copied (options with headers are built every time: a mapping can change).
    """
    if options.headers:
        spec = _spec(name, content_type, options)
    else:
        key = (name, content_type, options)
        template = _TEMPLATES.get(key)
        if template is None:
            if len(_TEMPLATES) >= _MAX_TEMPLATES:
                _TEMPLATES.clear()
            template = _TEMPLATES[key] = _spec(name, content_type, options)
        spec = task_service_pb2.TaskSpec()
        spec.CopyFrom(template)
    spec.payload = payload
    return spec


_TEMPLATES: dict[tuple[str, str, TaskOptions], task_service_pb2.TaskSpec] = {}
_MAX_TEMPLATES = 1024


def _spec(name: str, content_type: str, options: TaskOptions) -> task_service_pb2.TaskSpec:
    """A TaskSpec without its payload."""
    spec = task_service_pb2.TaskSpec(
        queue=options.queue, name=name, content_type=content_type,
        priority=options.priority,
        retry_policy=task_pb2.RetryPolicy(
            max_attempts=options.max_attempts,
            initial_backoff=duration(options.retry_backoff),
            max_backoff=duration(options.retry_backoff_max),
            jitter=options.retry_jitter,
        ),
    )
    spec.headers.update(options.headers)
    if options.delay is not None:
        spec.delay.CopyFrom(duration(options.delay))
    elif options.run_at is not None:
        spec.run_at.CopyFrom(timestamp(options.run_at))
    if options.timeout is not None:
        spec.execution_timeout.CopyFrom(duration(options.timeout))
    if options.lease is not None:
        spec.lease_duration.CopyFrom(duration(options.lease))
    if options.schedule_to_start is not None:
        spec.schedule_to_start_timeout.CopyFrom(duration(options.schedule_to_start))
    if options.result_ttl is not None:
        spec.result_ttl.CopyFrom(duration(options.result_ttl))
    _key_fields(spec, options)
    return spec


def _key_fields(spec: task_service_pb2.TaskSpec, options: TaskOptions) -> None:
    """Idempotency, unique and concurrency keys."""
    if options.idempotency_key is not None:
        spec.idempotency_key = options.idempotency_key
        if options.idempotency_ttl is not None:
            spec.idempotency_ttl.CopyFrom(duration(options.idempotency_ttl))
    if options.unique_key is not None:
        spec.unique_key = options.unique_key
    if options.concurrency_key is not None:
        spec.concurrency_key = options.concurrency_key
        spec.concurrency_limit = options.concurrency_limit


def signature_spec(sig: Signature) -> task_service_pb2.TaskSpec:
    """The TaskSpec of a signature, its arguments encoded as JSON."""
    payload = encode_arguments(sig.name, sig.args, sig.kwargs)
    return task_spec(sig.name, payload, JSON_CONTENT_TYPE, sig.options)


def to_signature(target: TaskDefinition[Any, Any] | Signature | str, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Signature:
    """The signature `enqueue` submits for a task definition, a signature or a bare name."""
    if isinstance(target, TaskDefinition):
        return target._signature(args, kwargs)
    if isinstance(target, Signature):
        if args or kwargs:
            raise TypeError("a Signature already holds its arguments; pass none to enqueue()")
        return target
    if isinstance(target, str):
        return signature(target, *args, **kwargs)
    raise TypeError(f"enqueue() needs a TaskDefinition, a Signature or a task name, got {target!r}")


def batch_requests(signatures: Iterable[Signature], max_tasks: int = MAX_BATCH_SIZE,
                   max_bytes: int = MAX_BATCH_BYTES, *,
                   templates: bool = True) -> Iterator[task_service_pb2.BatchEnqueueTasksRequest]:
    """BatchEnqueueTasks requests of at most `max_tasks` tasks and about `max_bytes` each.

    Signatures that all share their task and options (one task over many arguments) travel as
    one template and a payload per task (unless `templates` is False): smaller on the wire, and
    the broker checks the template once. Every signature is encoded before the first request is
    yielded, so a bad argument anywhere raises before anything is submitted.
    """
    sigs = list(signatures)
    payloads = [encode_arguments(sig.name, sig.args, sig.kwargs) for sig in sigs]
    if templates and sigs and _uniform(sigs):
        yield from _template_requests(_spec(sigs[0].name, JSON_CONTENT_TYPE, sigs[0].options), payloads,
                                      max_tasks, max_bytes)
        return
    request = task_service_pb2.BatchEnqueueTasksRequest()
    size = 0
    for sig, payload in zip(sigs, payloads, strict=True):
        spec = task_spec(sig.name, payload, JSON_CONTENT_TYPE, sig.options)
        spec_size = spec.ByteSize() + 8
        if request.tasks and (len(request.tasks) >= max_tasks or size + spec_size > max_bytes):
            yield request
            request = task_service_pb2.BatchEnqueueTasksRequest()
            size = 0
        request.tasks.append(spec)
        size += spec_size
    if request.tasks:
        yield request


def _uniform(sigs: list[Signature]) -> bool:
    first = sigs[0]
    name, options = first.name, first.options
    return all(sig.name == name and (sig.options is options or sig.options == options) for sig in sigs)


def _template_requests(template: task_service_pb2.TaskSpec, payloads: list[bytes], max_tasks: int,
                       max_bytes: int) -> Iterator[task_service_pb2.BatchEnqueueTasksRequest]:
    start = 0
    while start < len(payloads):
        end = start
        size = template.ByteSize()
        while end < len(payloads) and end - start < max_tasks:
            size += len(payloads[end]) + 8
            if size > max_bytes and end > start:
                break
            end += 1
        request = task_service_pb2.BatchEnqueueTasksRequest(template=template)
        request.payloads.extend(payloads[start:end])
        yield request
        start = end


def spelled_out(request: task_service_pb2.BatchEnqueueTasksRequest) -> task_service_pb2.BatchEnqueueTasksRequest:
    """A template request as one TaskSpec per task, for a broker older than templates (which
    sees no task in one and answers INVALID_ARGUMENT naming `tasks`)."""
    out = task_service_pb2.BatchEnqueueTasksRequest()
    out.tasks.extend(request.tasks)
    for payload in request.payloads:
        spec = out.tasks.add()
        spec.CopyFrom(request.template)
        spec.payload = payload
    return out


def needs_spelling_out(exc: InvalidArgumentError, request: task_service_pb2.BatchEnqueueTasksRequest) -> bool:
    """True when a broker refused a template request naming `tasks`: one older than templates
    sees no task in it. (A batch over the broker's size limit is refused naming `tasks` too; sent
    again spelled out, it is refused again, and that error is raised.)"""
    return bool(request.payloads) and exc.field == "tasks"


def name_batch_field(exc: InvalidArgumentError, request: task_service_pb2.BatchEnqueueTasksRequest) -> None:
    """Names `exc`'s field as in a request of TaskSpecs (`tasks[i].<field>`, as `enqueue_many`
    documents): `template.x` becomes `tasks[<first templated>].x`, `payloads[j]` becomes
    `tasks[<its index>].payload`."""
    field, offset = exc.field, len(request.tasks)
    if field is None or not request.payloads:
        return
    if field.startswith("template."):
        exc.field = f"tasks[{offset}].{field.removeprefix('template.')}"
    elif field.startswith("payloads["):
        exc.field = f"tasks[{offset + int(field[len('payloads['):field.index(']')])}].payload"


def _time(message: task_pb2.Task, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    value: timestamp_pb2.Timestamp = getattr(message, name)
    return value.ToDatetime(tzinfo=UTC)


def _span(message: Any, name: str) -> timedelta | None:
    if not message.HasField(name):
        return None
    value: duration_pb2.Duration = getattr(message, name)
    return value.ToTimedelta()


def _state(value: int) -> TaskState:
    try:
        return TaskState(value)
    except ValueError:
        return TaskState.UNSPECIFIED


def task_info(message: task_pb2.Task) -> TaskInfo:
    """A TaskInfo of a conveyor.v1.Task."""
    policy = message.retry_policy
    error = None
    if message.HasField("error"):
        error = RemoteError(message.error.type, message.error.message, message.error.traceback,
                            message.error.retryable)
    return TaskInfo(
        id=message.id, queue=message.queue, name=message.name, state=_state(message.state),
        payload=message.payload, content_type=message.content_type, headers=dict(message.headers),
        priority=message.priority, attempt=message.attempt,
        retry_policy=RetryPolicy(
            max_attempts=policy.max_attempts, initial_backoff=_span(policy, "initial_backoff"),
            max_backoff=_span(policy, "max_backoff"), multiplier=policy.multiplier, jitter=policy.jitter,
        ),
        execution_timeout=_span(message, "execution_timeout"),
        lease_duration=_span(message, "lease_duration"),
        created_at=_time(message, "created_at"), scheduled_at=_time(message, "scheduled_at"),
        started_at=_time(message, "started_at"), finished_at=_time(message, "finished_at"),
        start_deadline=_time(message, "start_deadline"),
        result=message.result, result_content_type=message.result_content_type, error=error,
        reason=message.reason, cancel_requested=message.cancel_requested, progress=message.progress,
        progress_message=message.progress_message, worker_id=message.worker_id,
        result_ttl=_span(message, "result_ttl"), schedule_id=message.schedule_id,
        idempotency_key=message.idempotency_key, unique_key=message.unique_key,
        concurrency_key=message.concurrency_key, concurrency_limit=message.concurrency_limit,
        workflow_id=message.workflow_id, workflow_node=message.workflow_node, parent_ids=tuple(message.parent_ids),
    )


def decode_result(info: TaskInfo) -> Any:
    """The value of a SUCCEEDED task: decoded JSON, or the raw bytes for other content types.

    Raises:
        ConveyorError: If a JSON result does not parse.
    """
    if not is_json(info.result_content_type):
        return info.result
    if not info.result:
        return None
    try:
        return json.loads(info.result)
    except ValueError as exc:
        raise ConveyorError(f"task {info.id}: result is not valid JSON: {exc}") from exc


def outcome(info: TaskInfo) -> Any:
    """The result of a terminal task, or the error that stands for its end.

    Raises:
        TaskFailedError: If it FAILED.
        TaskCancelledError: If it was CANCELLED.
        TaskExpiredError: If it EXPIRED.
    """
    if info.state is TaskState.FAILED:
        raise TaskFailedError(info.id, info.error or RemoteError("Error", info.reason, "", False), info)
    if info.state is TaskState.CANCELLED:
        raise TaskCancelledError(info.id, info)
    if info.state is TaskState.EXPIRED:
        raise TaskExpiredError(info.id, info)
    return decode_result(info)


def wait_request(task_id: str, seconds: float) -> task_service_pb2.WaitTaskRequest:
    """A WaitTask request for `seconds` more."""
    return task_service_pb2.WaitTaskRequest(task_id=task_id, timeout=duration(max(0.0, seconds)))


# Consecutive UNAVAILABLE answers a wait survives (a broker replica going away, a broker
# restarting) before giving up. With reconnect_delay's pauses that is about 4.5 s of trying:
# longer than grpc's own reconnect backoff (1 s, then 1.6 s, each ±20%), during which a channel
# that just failed to connect fails every call at once, even once the broker is back.
WAIT_RECONNECTS = 8


def reconnect_delay(failures: int, remaining: float) -> float:
    """Pause before reopening a wait stream: growing with failures, never past the deadline."""
    return max(0.0, min(0.05 * 2.0 ** failures, 1.0, remaining))


def call_outcome(message: task_pb2.Task, timeout: float) -> Any:
    """`outcome(terminal_or_timeout(task_info(message), timeout))`, reading a success's result
    straight from the message (a `call`'s usual answer needs no TaskInfo)."""
    if message.state == task_pb2.TASK_STATE_SUCCEEDED:
        content_type = message.result_content_type
        if not is_json(content_type):
            return message.result
        if not message.result:
            return None
        with contextlib.suppress(ValueError):
            return json.loads(message.result)
    return outcome(terminal_or_timeout(task_info(message), timeout))


def terminal_or_timeout(info: TaskInfo, timeout: float) -> TaskInfo:
    """`info` if the task has finished, else TaskTimeoutError (for waits of no time at all)."""
    if info.terminal:
        return info
    raise TaskTimeoutError(info.id, timeout, info)

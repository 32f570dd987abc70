"""Decoding of task hashes and script replies into domain objects (field names: lua/KEYS.md)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgpack

from broker_service.domain import (
    DEFAULT_CONTENT_TYPE,
    LeasedTask,
    ParentResult,
    RetryPolicy,
    TaskError,
    TaskRecord,
    TaskState,
    WorkflowNodeRecord,
    WorkflowRecord,
    WorkflowState,
)

# Every field a task hash can hold; listings read all of them but the two payloads.
RECORD_FIELDS: tuple[str, ...] = (
    "name", "state", "payload", "ctype", "headers", "prio", "attempt", "max",
    "b_init", "b_max", "b_mult", "b_jit", "timeout", "lease", "ttl",
    "created", "due", "started", "finished", "start_by", "token", "worker", "exec_dl",
    "result", "rtype", "e_type", "e_msg", "e_tb", "e_retry", "reason", "cancel", "prog", "prog_msg",
    "idem", "uniq", "ckey", "climit", "sched", "wf", "node", "parents", "rpass", "delay", "start_tmo", "pn", "rn",
)
# A payload or result over 64 bytes is stored in pieces: `payload`, then p2 .. p<pn> (see enqueue.lua).
LIST_FIELDS: tuple[str, ...] = tuple(f for f in RECORD_FIELDS if f not in ("payload", "result", "pn", "rn"))

# Entries per task in lease.lua's reply.
LEASED_ENTRIES = 13

_DEFAULT_RETRY = RetryPolicy()


def text(value: bytes | str | None, default: str = "") -> str:
    if value is None:
        return default
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def integer(value: bytes | str | int | None, default: int = 0) -> int:
    if value is None:
        return default
    if isinstance(value, int):
        return value
    return int(float(value))


def real(value: bytes | str | None, default: float = 0.0) -> float:
    return default if value is None else float(value)


def headers_from(value: bytes | str | None) -> dict[str, str]:
    if not value:
        return {}
    decoded = json.loads(value)
    return {str(k): str(v) for k, v in decoded.items()} if isinstance(decoded, dict) else {}


def headers_to(headers: Mapping[str, str]) -> str:
    """JSON of the headers, '' when there are none (the field then stays absent)."""
    return json.dumps(dict(headers), separators=(",", ":"), ensure_ascii=False) if headers else ""


def record_from_fields(ulid: str, queue: str, fields: Mapping[str, bytes | None]) -> TaskRecord:
    """A TaskRecord from a task hash read as {field: value} (absent fields missing or None)."""
    get = fields.get
    state = TaskState.from_label(text(get("state")))
    error = None
    if get("e_type") is not None:
        error = TaskError(type=text(get("e_type")), message=text(get("e_msg")),
                          traceback=text(get("e_tb")), retryable=get("e_retry") != b"0")
    return TaskRecord(
        ulid=ulid,
        queue=queue,
        name=text(get("name")),
        state=state,
        payload=joined(get, "payload", "p", "pn"),
        content_type=text(get("ctype"), DEFAULT_CONTENT_TYPE),
        headers=headers_from(get("headers")),
        priority=integer(get("prio")),
        attempt=integer(get("attempt")),
        retry=RetryPolicy(
            max_attempts=integer(get("max"), _DEFAULT_RETRY.max_attempts),
            initial_backoff_ms=integer(get("b_init"), _DEFAULT_RETRY.initial_backoff_ms),
            max_backoff_ms=integer(get("b_max"), _DEFAULT_RETRY.max_backoff_ms),
            multiplier=real(get("b_mult"), _DEFAULT_RETRY.multiplier),
            jitter=real(get("b_jit")),
        ),
        timeout_ms=integer(get("timeout")),
        lease_ms=integer(get("lease"), 30_000),
        result_ttl_ms=integer(get("ttl"), 86_400_000),
        created_ms=integer(get("created")),
        scheduled_ms=integer(get("due") or get("created")),
        started_ms=integer(get("started")),
        finished_ms=integer(get("finished")),
        start_by_ms=integer(get("start_by")),
        result=joined(get, "result", "r", "rn"),
        result_content_type=text(get("rtype"), DEFAULT_CONTENT_TYPE if state is TaskState.SUCCEEDED else ""),
        error=error,
        reason=text(get("reason")),
        cancel_requested=get("cancel") == b"1",
        progress=real(get("prog")),
        progress_message=text(get("prog_msg")),
        worker_id=text(get("worker")),
        lease_token=integer(get("token")),
        idempotency_key=text(get("idem")),
        unique_key=text(get("uniq")),
        concurrency_key=text(get("ckey")),
        concurrency_limit=integer(get("climit")),
        schedule_id=text(get("sched")),
        workflow_id=text(get("wf")),
        workflow_node=text(get("node")),
        parent_ids=tuple(text(get("parents")).split()),
    )


def joined(get: Callable[[str], Any], name: str, prefix: str, count_name: str) -> bytes:
    """A payload or result, joined from its pieces when a script stored it in several: `name`
    holds the first, `<prefix>2` .. `<prefix><count>` the rest (see enqueue.lua's `pieces`)."""
    first = get(name) or b""
    pieces = integer(get(count_name), 1)
    if pieces <= 1:
        return bytes(first)
    return b"".join([first, *(get(f"{prefix}{i}") or b"" for i in range(2, pieces + 1))])


def record_from_hash(ulid: str, queue: str, raw: Mapping[bytes | str, bytes | str]) -> TaskRecord:
    """A TaskRecord from an HGETALL reply."""
    fields = {text(k): v if isinstance(v, bytes) else v.encode() for k, v in raw.items()}
    return record_from_fields(ulid, queue, fields)


def fields_from_packed(packed: bytes) -> dict[str, bytes]:
    """The fields of a ready task's packed record (lua/KEYS.md, `ready`) as its task hash holds
    them, but for the payload, whole rather than in pieces."""
    name, created, payload, *rest = msgpack.unpackb(packed, raw=True)
    fields = {"state": b"queued", "name": name, "created": created}
    if payload:
        fields["payload"] = payload
    for i in range(0, len(rest), 2):
        fields[text(rest[i])] = rest[i + 1]
    return fields


def record_from_packed(ulid: str, queue: str, packed: bytes) -> TaskRecord:
    """A TaskRecord from a ready task's packed record."""
    return record_from_fields(ulid, queue, fields_from_packed(packed))


def leased_from_reply(queue: str, reply: Sequence[Any]) -> tuple[list[LeasedTask], list[str]]:
    """Decodes lease.lua's reply {now, leased (flat), expired}."""
    now = integer(reply[0])
    flat: Sequence[Any] = reply[1]
    leased = []
    for i in range(0, len(flat), LEASED_ENTRIES):
        (ulid, name, payload, ctype, headers, attempt, max_attempts, token, lease, timeout,
         due, presults, rpass) = flat[i:i + LEASED_ENTRIES]
        leased.append(LeasedTask(
            ulid=text(ulid), queue=queue, name=text(name), payload=payload or b"",
            content_type=text(ctype, DEFAULT_CONTENT_TYPE), headers=headers_from(headers),
            attempt=integer(attempt), max_attempts=integer(max_attempts), lease_token=integer(token),
            lease_ms=integer(lease), timeout_ms=integer(timeout), queued_at_ms=integer(due),
            started_ms=now,
            parent_results=decode_parent_results(presults) if presults else (),
            result_passing=integer(rpass),
        ))
    return leased, [text(u) for u in reply[2]]


def encode_parent_results(results: Sequence[ParentResult]) -> bytes:
    """The `presults` field of a released workflow node: per parent its task id, node name,
    content type and payload, each as `<length>:<bytes>` (payloads are opaque bytes)."""
    out = bytearray()
    for result in results:
        for part in (result.task_id.encode(), result.node.encode(), result.content_type.encode(), result.payload):
            out += b"%d:" % len(part)
            out += part
    return bytes(out)


def decode_parent_results(blob: bytes) -> tuple[ParentResult, ...]:
    """The inverse of encode_parent_results; ValueError when malformed."""
    parts: list[bytes] = []
    pos = 0
    while pos < len(blob):
        colon = blob.index(b":", pos)
        length = int(blob[pos:colon])
        parts.append(blob[colon + 1:colon + 1 + length])
        pos = colon + 1 + length
    if len(parts) % 4:
        raise ValueError("malformed parent results")
    return tuple(ParentResult(task_id=parts[i].decode(), node=parts[i + 1].decode(),
                              content_type=parts[i + 2].decode(), payload=parts[i + 3])
                 for i in range(0, len(parts), 4))


def workflow_from_hash(workflow_id: str, raw: Mapping[bytes | str, bytes | str]) -> WorkflowRecord:
    """A WorkflowRecord from an HGETALL of its record (fields: lua/KEYS.md)."""
    fields = {text(k): text(v) for k, v in raw.items()}
    nodes = []
    for name in fields.get("nodes", "").split():
        settled = fields.get(f"s/{name}")
        nodes.append(WorkflowNodeRecord(
            name=name, task_id=fields.get(f"t/{name}", ""),
            parents=tuple(fields.get(f"p/{name}", "").split()),
            children=tuple(fields.get(f"c/{name}", "").split()),
            settled=TaskState.from_label(settled) if settled else None))
    return WorkflowRecord(
        workflow_id=workflow_id, name=fields.get("name", ""),
        state=WorkflowState.from_label(fields.get("state", "running")), nodes=nodes,
        created_ms=integer(fields.get("created")), finished_ms=integer(fields.get("finished")),
        reason=fields.get("reason", ""))

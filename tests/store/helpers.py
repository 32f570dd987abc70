"""Helpers of the store tests: read a queue's whole state, build tasks, watch its events channel."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import redis

from broker_service.domain import NewTask, RetryPolicy, TaskState, new_ulid
from broker_service.store.keys import QueueKeys
from broker_service.store.records import fields_from_packed

NAMESPACE = "conveyor"
INDEXES = ("scheduled", "running", "start_by", "pending", "succeeded", "failed", "cancelled", "expired")
TIME_FIELDS = ("created", "due", "started", "finished", "start_by", "exec_dl")
BINARY_FIELDS = ("payload", "result", "presults")
PIECE, MAX_PIECES = 64, 32  # lua/lib/put_pieces.lua's


def _binary(field: str) -> bool:
    """Payload and result bytes, and the pieces of a long one (p2, p3, ..., r2, r3, ...)."""
    return field in BINARY_FIELDS or (field[:1] in ("p", "r") and field[1:].isdigit())


def _pieces(name: str, prefix: str, count_name: str, value: bytes) -> dict[str, bytes | str]:
    """A value as a task hash holds it (enqueue.lua's put_pieces): in 64-byte pieces when longer."""
    if len(value) <= PIECE or len(value) > PIECE * MAX_PIECES:
        return {name: value}
    count = -(-len(value) // PIECE)
    out: dict[str, bytes | str] = {name: value[:PIECE]}
    for j in range(2, count + 1):
        out[f"{prefix}{j}"] = value[(j - 1) * PIECE:j * PIECE]
    out[count_name] = str(count)
    return out


def dump_queue(client: redis.Redis, queue: str, namespace: str = NAMESPACE) -> dict[str, Any]:
    """Every key of a queue as plain data.

    {"indexes": {index: [ulid, ...] in order}, "scores": {index: {ulid: score}},
     "tasks": {ulid: {field: str (bytes for payload/result and their pieces)}},
     "expires": {ulid: PEXPIRETIME, -1 for none},
     "ready": {priority: [ulid, ...] (every list entry, stale ones too)},
     "seq": int or None, "other": [names of keys no schema entry explains]}

    The ready tasks stand as the `queued` index, in lease order (stale entries left out; no
    scores: lists have none), each record as the task hash it becomes when it leaves `ready`
    (state queued, a long payload in pieces).
    """
    keys = QueueKeys(namespace, queue)
    out: dict[str, Any] = {"indexes": {}, "scores": {}, "tasks": {}, "expires": {}, "ready": {}, "seq": None,
                           "other": []}
    for name in INDEXES:
        key = keys.start_deadlines if name == "start_by" else f"{keys.tag}:{name}"
        entries: Any = client.zrange(key, 0, -1, withscores=True)
        out["indexes"][name] = [m.decode() for m, _ in entries]
        out["scores"][name] = {m.decode(): int(s) for m, s in entries}
    packed: Any = client.hgetall(keys.ready)
    out["indexes"]["queued"] = []
    for priority in range(9, -1, -1):
        listed: Any = client.lrange(keys.ready_list(priority), 0, -1)
        out["ready"][priority] = [u.decode() for u in listed]
        for raw_ulid in listed:
            ulid = raw_ulid.decode()
            if raw_ulid not in packed or ulid in out["tasks"]:
                continue
            fields = fields_from_packed(packed[raw_ulid])
            task: dict[str, Any] = {k: (v if _binary(k) else v.decode()) for k, v in fields.items() if k != "payload"}
            task.update(_pieces("payload", "p", "pn", fields.get("payload", b"")) if "payload" in fields else {})
            out["tasks"][ulid] = task
            out["expires"][ulid] = -1
            out["indexes"]["queued"].append(ulid)
    unlisted = {u.decode() for u in packed} - set(out["indexes"]["queued"])
    assert not unlisted, f"ready tasks in no list: {sorted(unlisted)}"
    seq: Any = client.get(keys.sequence)
    out["seq"] = int(seq) if seq is not None else None
    known = ({keys.sequence, keys.start_deadlines, keys.ready} | {f"{keys.tag}:{n}" for n in INDEXES}
             | {keys.ready_list(p) for p in range(10)})
    raw_key: Any
    for raw_key in client.scan_iter(match=f"{keys.tag}:*", count=1000):
        key = raw_key.decode()
        if key.startswith(keys.task_prefix):
            ulid = key[len(keys.task_prefix):]
            fields: Any = client.hgetall(key)
            out["tasks"][ulid] = {
                f.decode(): (v if _binary(f.decode()) else v.decode()) for f, v in fields.items()
            }
            out["expires"][ulid] = client.pexpiretime(key)
        elif key not in known:
            out["other"].append(key)
    return out


def without(fields: dict[str, Any], *names: str) -> dict[str, Any]:
    """The fields but `names` (by default compare everything but times)."""
    drop = set(names or TIME_FIELDS)
    return {k: v for k, v in fields.items() if k not in drop}


def new_task(queue: str, name: str = "tests.work", **options: Any) -> NewTask:
    return NewTask(ulid=new_ulid(), queue=queue, name=name, **options)


def policy(**options: Any) -> RetryPolicy:
    return RetryPolicy(**options)


def redis_now_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def queued_score(priority: int, ready_ms: int) -> int:
    return (9 - priority) * 10**13 + ready_ms


class EventWatcher:
    """Subscribes to a queue's events channels (`running` has its own); `take` returns what
    arrived on either, in the order it was published, with a deadline."""

    def __init__(self, client: redis.Redis, queue: str, namespace: str = NAMESPACE) -> None:
        keys = QueueKeys(namespace, queue)
        self._pubsub = client.pubsub()  # type: ignore[no-untyped-call]
        self._pubsub.subscribe(keys.events, keys.running_events)
        deadline = time.monotonic() + 5
        confirmed = 0
        while confirmed < 2:  # wait for the subscriptions to be confirmed before anything is published
            message = self._pubsub.get_message(timeout=0.5)
            if message is not None and message["type"] == "subscribe":
                confirmed += 1
            assert time.monotonic() < deadline, "no subscribe confirmation"

    def take(self, count: int, timeout: float = 2.0) -> list[str]:
        """Exactly `count` messages (fails after `timeout`), then any that arrive within 50 ms."""
        messages: list[str] = []
        deadline = time.monotonic() + timeout
        while len(messages) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"expected {count} events, got {messages}"
            message = self._pubsub.get_message(timeout=min(left, 0.2))
            if message is not None and message["type"] == "message":
                messages.append(message["data"].decode())
        while (message := self._pubsub.get_message(timeout=0.05)) is not None:
            if message["type"] == "message":
                messages.append(message["data"].decode())
        return messages

    def close(self) -> None:
        self._pubsub.close()


def event(kind: str, ulids: Iterable[str] = ()) -> str:
    return " ".join([kind, *ulids])


def state_of(dump: dict[str, Any], ulid: str) -> TaskState:
    return TaskState.from_label(dump["tasks"][ulid]["state"])

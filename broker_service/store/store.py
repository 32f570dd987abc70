"""The store: every task transition as one Lua script call, through typed async methods.

CONTRACT:
- Every method that changes state calls exactly one script (batched methods: one script call
  per queue), loaded once with SCRIPT LOAD and called with EVALSHA (reloading on NOSCRIPT).
- Every redis.exceptions.ConnectionError/TimeoutError (and BusyLoadingError, ReadOnlyError)
  is raised as StoreUnavailableError; script error replies map by their first word
  (NOT_FOUND, TERMINAL, STALE) to the domain errors.
- Times come from Redis TIME inside the scripts.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from broker_service.domain import (
    TASK_ID_PATTERN,
    Completion,
    FailOutcome,
    Failure,
    Lease,
    LeasedTask,
    LeaseState,
    NewTask,
    ReapResult,
    TaskNotFoundError,
    TaskRecord,
    TaskState,
)
from broker_service.store.errors import redis_errors
from broker_service.store.keys import GlobalKeys, QueueKeys
from broker_service.store.records import (
    LIST_FIELDS,
    leased_from_reply,
    record_from_fields,
    record_from_hash,
    text,
)
from broker_service.store.scripts import Scripts

_CURSOR_VERSION = "1"


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """What an enqueue did to one task."""

    ulid: str
    state: TaskState  # QUEUED or SCHEDULED (an existing ulid: its current state, left untouched)
    duplicate: bool = False  # an idempotency or unique key matched: `ulid` is the existing task's


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing."""

    tasks: list[TaskRecord]
    next_cursor: str  # empty on the last page


class Store:
    """Async access to Conveyor's Redis data. One instance per broker; safe for concurrent use.

    The Redis client must answer bytes (decode_responses=False): payloads are opaque bytes.
    """

    def __init__(self, redis: Redis, *, namespace: str = "conveyor",
                 dead_letter_ttl_ms: int = 7 * 86_400_000, dead_letter_max: int = 10_000) -> None:
        self.redis = redis
        self.keys = GlobalKeys(namespace)
        self.dead_letter_ttl_ms = dead_letter_ttl_ms
        self.dead_letter_max = dead_letter_max
        self.scripts = Scripts(redis)

    def queue_keys(self, queue: str) -> QueueKeys:
        return self.keys.queue(queue)

    async def load_scripts(self) -> None:
        """SCRIPT LOADs every script (call at start and after a Redis restart)."""
        await self.scripts.load()

    async def ping(self) -> None:
        """Raises StoreUnavailableError when Redis does not answer."""
        with redis_errors():
            await self.redis.ping()

    async def eviction_policy(self) -> str | None:
        """Redis's maxmemory-policy, or None when CONFIG GET is not allowed."""
        with redis_errors():
            try:
                reply = await self.redis.config_get("maxmemory-policy")
            except ResponseError:
                return None
        for key, value in reply.items():
            if text(key) == "maxmemory-policy":
                return text(value)
        return None

    async def register_queues(self, queues: list[str]) -> None:
        """Adds queue names to the global queue set (idempotent)."""
        if not queues:
            return
        with redis_errors():
            await self.redis.sadd(self.keys.queues, *queues)

    async def queues(self) -> list[str]:
        """Every known queue name, sorted."""
        with redis_errors():
            members = await self.redis.smembers(self.keys.queues)
        return sorted(text(m) for m in members)

    async def enqueue(self, queue: str, tasks: list[NewTask]) -> list[EnqueueResult]:
        """Writes tasks of one queue atomically (script enqueue.lua), in order.

        A task with run_at_ms or delay_ms in the future (Redis clock) goes to `scheduled`,
        else to `queued`. Sets start_by when start_timeout_ms > 0 (due + timeout). Publishes
        `wake` when `queued` was empty before and now is not. A ulid that already exists is
        left as it is and answers its current state, so retrying an enqueue is harmless.
        """
        if not tasks:
            return []
        for task in tasks:
            if task.queue != queue:
                raise ValueError(f"task {task.ulid} belongs to queue {task.queue!r}, not {queue!r}")
        states = await self.scripts.enqueue(self.queue_keys(queue), tasks)
        return [EnqueueResult(task.ulid, TaskState.from_label(text(state)))
                for task, state in zip(tasks, states, strict=True)]

    async def get(self, queue: str, ulid: str) -> TaskRecord:
        """Reads one task (HGETALL). Raises TaskNotFoundError."""
        with redis_errors():
            raw = await self.redis.hgetall(self.queue_keys(queue).task(ulid))
        if not raw:
            raise TaskNotFoundError(f"task {ulid}@{queue}")
        return record_from_hash(ulid, queue, raw)

    async def lease(self, queue: str, count: int, worker_id: str) -> tuple[list[LeasedTask], list[str]]:
        """Pops up to `count` ready tasks by priority and leases them to `worker_id` (lease.lua).

        Each leased task: attempt += 1, state running, token = INCR seq, started = now,
        exec_dl = now + timeout (if any), score in `running` = min(now + lease, exec_dl).
        A popped task past its start_by deadline is EXPIRED instead (reason "schedule_to_start")
        and does not count toward `count`. Returns (leased, expired ulids). Publishes `running`.
        The start_by deadline applies until a task's first start (attempt 0).
        """
        if count <= 0:
            return [], []
        reply = await self.scripts.lease(self.queue_keys(queue), count, worker_id)
        return leased_from_reply(queue, reply)

    async def extend(self, queue: str, leases: list[Lease], worker_id: str) -> list[LeaseState]:
        """Renews leases (extend.lua); also the re-claim of a reconnecting worker.

        Per lease, in order: STALE if the task is not running or the token differs; otherwise
        the score becomes min(now + lease, exec_dl), `worker` is set, and the answer is
        CANCEL_REQUESTED when `cancel` is set, else ACTIVE.
        """
        if not leases:
            return []
        answers = await self.scripts.extend(self.queue_keys(queue), worker_id, leases)
        return [LeaseState(int(a)) for a in answers]

    async def complete(self, queue: str, items: list[Completion]) -> list[int | None]:
        """Stores results (complete.lua): state succeeded, result kept `ttl` ms.

        Per item: the run time in ms, or None when the token is stale. Completing again with
        the same token after success answers the run time again (idempotent), never a second
        write. Publishes `succeeded`.
        """
        if not items:
            return []
        answers = await self.scripts.complete(self.queue_keys(queue), items)
        return [None if a < 0 else int(a) for a in answers]

    async def fail(self, queue: str, items: list[Failure], random_fractions: list[float]) -> list[FailOutcome]:
        """Records failed attempts (fail.lua).

        Per item (STALE if the token is not current): stores the error; CANCELLED if a cancel
        was requested; DEAD (state failed, into the dead-letter set, expires after the
        dead-letter TTL, set trimmed to dead_letter_max) if not retryable or attempts are
        exhausted; otherwise RETRYING: scheduled after retry_after_ms if >= 0, else after the
        task's backoff for this attempt using random_fractions[i] for jitter (0 delay goes
        straight to queued). Publishes the matching kinds.
        """
        if len(random_fractions) != len(items):
            raise ValueError(f"{len(items)} failures need as many random fractions, got {len(random_fractions)}")
        if not items:
            return []
        answers = await self.scripts.fail(self.queue_keys(queue), items, random_fractions,
                                          self.dead_letter_ttl_ms, self.dead_letter_max)
        return [FailOutcome(text(a)) for a in answers]

    async def cancelled(self, queue: str, leases: list[Lease]) -> list[bool]:
        """A worker stopped running tasks because they were cancelled (cancel_running.lua).

        Per lease: True if it was current (state cancelled, kept `ttl` ms), False if stale.
        """
        if not leases:
            return []
        return [a == 1 for a in await self.scripts.cancel_running(self.queue_keys(queue), leases)]

    async def release(self, queue: str, leases: list[Lease], reason: str, started: bool) -> list[bool]:
        """Hands leased tasks back to `queued` at once (release.lua), keeping their place.

        Per lease: True if current. When `started` is False the attempt is not counted
        (attempt -= 1). A task with a cancel request goes to cancelled instead. Sets `reason`.
        Publishes `queued`.
        """
        if not leases:
            return []
        answers = await self.scripts.release(self.queue_keys(queue), leases, reason, started)
        return [a == 1 for a in answers]

    async def progress(self, queue: str, leases: list[Lease], values: list[tuple[float, str]]) -> list[bool]:
        """Stores progress of running attempts (progress.lua); per lease True if current."""
        if len(values) != len(leases):
            raise ValueError(f"{len(leases)} leases need as many progress values, got {len(values)}")
        if not leases:
            return []
        return [a == 1 for a in await self.scripts.progress(self.queue_keys(queue), leases, values)]

    async def cancel(self, queue: str, ulid: str, reason: str) -> TaskState:
        """Cancels a task (cancel.lua).

        SCHEDULED, QUEUED or PENDING: CANCELLED at once (removed from its index, kept `ttl`
        ms), publishes `cancelled`, returns CANCELLED. RUNNING: sets `cancel`, publishes
        `cancel`, returns RUNNING. Terminal: TaskTerminalError. Unknown: TaskNotFoundError.
        """
        return TaskState.from_label(text(await self.scripts.cancel(self.queue_keys(queue), ulid, reason)))

    async def reap(self, queue: str, limit: int, random_fraction: float) -> ReapResult:
        """Handles running tasks whose score is past (reap.lua), at most `limit`.

        Past exec_dl: the attempt fails with error type TimeoutError (retried per policy, or
        dead). Otherwise the lease expired: back to `queued` (reason lease_expired), or dead
        when attempts are exhausted (error type LeaseExpired). A cancel request wins: cancelled.
        Each ulid lands in one list: `requeued` (lease expired, back in queued), `timed_out`
        (timed out and retrying), `dead` (dead-lettered, for either cause), `cancelled`.
        """
        if limit <= 0:
            return ReapResult()
        requeued, timed_out, dead, cancelled = await self.scripts.reap(
            self.queue_keys(queue), limit, random_fraction, self.dead_letter_ttl_ms, self.dead_letter_max)
        return ReapResult(requeued=[text(u) for u in requeued], timed_out=[text(u) for u in timed_out],
                          dead=[text(u) for u in dead], cancelled=[text(u) for u in cancelled])

    async def promote(self, queue: str, limit: int) -> int:
        """Moves due tasks from `scheduled` to `queued` (promote.lua); returns how many."""
        if limit <= 0:
            return 0
        return await self.scripts.promote(self.queue_keys(queue), limit)

    async def expire(self, queue: str, limit: int) -> list[str]:
        """Ends waiting tasks past their schedule-to-start deadline as EXPIRED (expire.lua)."""
        if limit <= 0:
            return []
        return [text(u) for u in await self.scripts.expire(self.queue_keys(queue), limit)]

    async def trim(self, queue: str, limit: int) -> int:
        """Drops index entries of finished tasks whose record has expired (trim.lua)."""
        if limit <= 0:
            return 0
        return await self.scripts.trim(self.queue_keys(queue), limit)

    async def list_tasks(self, queue: str, state: TaskState, page_size: int, cursor: str) -> Page:
        """Lists a queue's tasks in one state in index order (payload and result left out).

        The cursor is opaque to callers: it survives concurrent inserts, so a task present
        throughout the listing is seen exactly once. A malformed cursor raises ValueError.
        (It holds the last entry seen, (score, ulid); the next page starts right after it.)
        """
        if page_size <= 0:
            raise ValueError(f"page_size must be positive, got {page_size}")
        after = _decode_cursor(cursor, queue, state) if cursor else None
        keys = self.queue_keys(queue)
        more, flat = await self.scripts.list_page(keys, keys.by_state(state), page_size, after, LIST_FIELDS)
        width = 2 + len(LIST_FIELDS)
        tasks = []
        last: tuple[str, str] | None = None
        for i in range(0, len(flat), width):
            ulid, score = text(flat[i]), text(flat[i + 1])
            last = (score, ulid)
            values = dict(zip(LIST_FIELDS, flat[i + 2:i + width], strict=True))
            if values["state"] is not None:  # else the record expired before its index entry went
                tasks.append(record_from_fields(ulid, queue, values))
        next_cursor = _encode_cursor(queue, state, last) if more and last else ""
        return Page(tasks=tasks, next_cursor=next_cursor)

    async def depths(self, queue: str) -> dict[TaskState, int]:
        """Size of every index of the queue, in one round trip."""
        keys = self.queue_keys(queue)
        states = list(TaskState)
        with redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for state in states:
                    pipe.zcard(keys.by_state(state))
                sizes = await pipe.execute()
        return {state: int(size) for state, size in zip(states, sizes, strict=True)}

    # --- client sessions: the result waits of one session, read together ---

    async def get_many(self, queue: str, ulids: list[str]) -> list[TaskRecord | None]:
        """Reads tasks of one queue in one round trip (pipelined HGETALL); None where unknown."""
        keys = self.queue_keys(queue)
        with redis_errors():
            if len(ulids) == 1:
                raws = [await self.redis.hgetall(keys.task(ulids[0]))]
            else:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for ulid in ulids:
                        pipe.hgetall(keys.task(ulid))
                    raws = await pipe.execute()
        return [record_from_hash(ulid, queue, raw) if raw else None for ulid, raw in zip(ulids, raws, strict=True)]


def _encode_cursor(queue: str, state: TaskState, last: tuple[str, str]) -> str:
    score, ulid = last
    raw = f"{_CURSOR_VERSION} {int(state)} {queue} {score} {ulid}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, queue: str, state: TaskState) -> tuple[str, str]:
    """(score, ulid) of the last entry seen; ValueError when malformed or from another listing."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("malformed cursor") from None
    parts = raw.split(" ")
    if len(parts) != 5 or parts[0] != _CURSOR_VERSION:
        raise ValueError("malformed cursor")
    _, state_value, cursor_queue, score, ulid = parts
    if state_value != str(int(state)) or cursor_queue != queue:
        raise ValueError("cursor belongs to another listing")
    try:
        number = float(score)
    except ValueError:
        raise ValueError("malformed cursor") from None
    if not math.isfinite(number) or TASK_ID_PATTERN.fullmatch(f"{ulid}@{queue}") is None:
        raise ValueError("malformed cursor")
    return score, ulid

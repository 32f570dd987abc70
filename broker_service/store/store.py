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

import asyncio
import base64
import binascii
import contextlib
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from broker_service.domain import (
    DEFAULT_CONTENT_TYPE,
    TASK_ID_PATTERN,
    Completion,
    FailOutcome,
    Failure,
    Lease,
    LeasedTask,
    LeaseState,
    NewTask,
    QueueInfo,
    QueueLimits,
    ReapResult,
    Settlement,
    TaskNotFoundError,
    TaskRecord,
    TaskState,
    TaskTerminalError,
    WorkflowNodeRecord,
    WorkflowNotFoundError,
    WorkflowRecord,
    WorkflowState,
    WorkflowTerminalError,
)
from broker_service.schedule import Schedule, ScheduleNotFoundError, ScheduleSpec
from broker_service.store.errors import redis_errors
from broker_service.store.keys import GlobalKeys, QueueKeys, ScheduleKeys
from broker_service.store.records import (
    LIST_FIELDS,
    fields_from_packed,
    joined,
    leased_from_reply,
    record_from_fields,
    record_from_hash,
    text,
    workflow_from_hash,
)
from broker_service.store.schedules import schedule_from_hash, schedule_from_reply, template_json
from broker_service.store.scripts import Scripts

_CURSOR_VERSION = "1"
# Listing QUEUED goes on, after the ready tasks, into the tasks held back by their concurrency
# key: a cursor in that second part carries this prefix (base64 never holds a dot).
_HELD_CURSOR = "h."
# A cursor among the ready tasks names a priority: one of these.
_PRIORITIES = frozenset(str(p) for p in range(10))


@dataclass(slots=True)  # not frozen: one is made per task of a batch (see NewTask)
class EnqueueResult:
    """What an enqueue did to one task."""

    ulid: str
    state: TaskState | None  # QUEUED or SCHEDULED (an existing ulid: its current state, left untouched)
    duplicate: bool = False  # an idempotency or unique key matched: `ulid` is the existing task's
    # Which key matched ("idempotency" or "unique"); a duplicate's state is None when the record
    # of the task its idempotency key names has already expired.
    duplicate_kind: str = ""


class LeaseBatch(NamedTuple):
    """What one lease call did, and when to call again under the queue's limits."""

    leased: list[LeasedTask]
    expired: list[str]
    retry_ms: int = -1  # > 0: the rate limit held tasks back, next token in ms; 0: call again now
    slots_full: bool = False  # max_running held tasks back: call again when a task leaves running


@dataclass(frozen=True, slots=True)
class NodeLinks:
    """A task's state and its place in a workflow (empty workflow_id: a lone task)."""

    state: TaskState
    workflow_id: str
    node: str
    parent_ids: tuple[str, ...]
    result_passing: int


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

    async def server_version(self) -> tuple[int, ...] | None:
        """The Redis version the server speaks for (Valkey answers the Redis version it is
        compatible with), or None when INFO is not allowed or says nothing of it."""
        with redis_errors():
            try:
                info = await self.redis.info("server")
            except ResponseError:
                return None
        version = text(info.get("redis_version"))
        try:
            return tuple(int(part) for part in version.split("."))
        except ValueError:
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
        else to `ready` (packed, at the tail of its priority's list). Sets start_by when
        start_timeout_ms > 0 (due + timeout). Publishes `wake` when `ready` was empty before and
        now is not. A ulid that already exists is left as it is and answers its current state,
        so retrying an enqueue is harmless.

        Idempotency and unique keys: a task whose key names an existing task (see enqueue.lua)
        stores nothing; its result carries that task's ulid and state, `duplicate` set.
        """
        if not tasks:
            return []
        _check_queue(queue, tasks)
        return _enqueued(await self.scripts.enqueue(self.queue_keys(queue), tasks), tasks)

    async def enqueue_and_lease(self, queue: str, tasks: list[NewTask], count: int,
                                worker_id: str) -> tuple[list[EnqueueResult], LeaseBatch]:
        """`enqueue`, then `lease` of up to `count` tasks for `worker_id`, in one round trip:
        how tasks submitted while a worker waits on this broker go straight to it."""
        _check_queue(queue, tasks)
        flat, reply = await self.scripts.enqueue_and_lease(self.queue_keys(queue), tasks, count, worker_id)
        return _enqueued(flat, tasks), _lease_batch(queue, reply)

    async def get(self, queue: str, ulid: str) -> TaskRecord:
        """Reads one task (HGETALL; a ready one from `ready`). Raises TaskNotFoundError."""
        [record] = await self.get_many([(queue, ulid)])
        if record is None:
            raise TaskNotFoundError(f"task {ulid}@{queue}")
        return record

    async def lease(self, queue: str, count: int, worker_id: str) -> LeaseBatch:
        """Pops up to `count` ready tasks by priority and leases them to `worker_id` (lease.lua).

        Each leased task: attempt += 1, state running, token = INCR seq, started = now,
        exec_dl = now + timeout (if any), score in `running` = min(now + lease, exec_dl).
        A popped task past its start_by deadline is EXPIRED instead (reason "schedule_to_start")
        and does not count toward `count`. Returns (leased, expired ulids). Publishes `running`.
        The start_by deadline applies until a task's first start (attempt 0).

        The queue's limits cap `count` (max_running, the rate's token bucket); a task whose
        concurrency key is at its limit is held back. `retry_ms` and `slots_full` say when to
        lease again if tasks are left.
        """
        if count <= 0:
            return LeaseBatch([], [])
        return _lease_batch(queue, await self.scripts.lease(self.queue_keys(queue), count, worker_id))

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
        return (await self.complete_and_read(queue, items, []))[0]

    async def complete_and_read(self, queue: str, items: list[Completion],
                                read: list[str]) -> tuple[list[int | None], list[TaskRecord | None]]:
        """`complete`, and the records of `read` (ulids) as it left them, in the same round trip
        (None for a record that is gone)."""
        if not items:
            return [], [None] * len(read)
        answers, hashes = await self.scripts.complete(self.queue_keys(queue), items, read)
        return ([None if a < 0 else int(a) for a in answers],
                [record_from_hash(ulid, queue, raw) if raw else None for ulid, raw in zip(read, hashes, strict=True)])

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
        """Hands leased tasks back at once (release.lua), ready at the head of their lists.

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
        dead). Otherwise the lease expired: ready again at the head (reason lease_expired), or dead
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
        """Makes due tasks of `scheduled` ready (promote.lua), and moves an older broker's `queued`
        sorted set into `ready`; returns how many tasks moved."""
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
        keys = self.queue_keys(queue)
        index = keys.by_state(state)
        if state is TaskState.QUEUED and cursor.startswith(_HELD_CURSOR):
            index, cursor = keys.held, cursor[len(_HELD_CURSOR):]
        after = _decode_cursor(cursor, queue, state) if cursor else None
        if index == keys.ready:
            return await self._list_ready(queue, page_size, after)
        more, flat = await self.scripts.list_page(keys, index, page_size, after, LIST_FIELDS)
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
        if index == keys.held and next_cursor:
            next_cursor = _HELD_CURSOR + next_cursor
        return Page(tasks=tasks, next_cursor=next_cursor)

    async def _list_ready(self, queue: str, page_size: int, after: tuple[str, str] | None) -> Page:
        """A page of the ready tasks in lease order: the lists of priority 9 down to 0, passing
        over stale entries; then, by a cursor of its own, the held tasks. `after` is (priority,
        ulid) of the last task seen: the page starts right after that entry, or at the head of
        its list when it has left (the lists lose entries only at the head, so every entry that
        stood before it has left too)."""
        keys = self.queue_keys(queue)
        cursor_priority, last_seen = (after[0], after[1]) if after else ("9", "")
        if cursor_priority not in _PRIORITIES:
            raise ValueError("malformed cursor")
        first = int(cursor_priority)
        tasks: list[TaskRecord] = []
        last: tuple[str, str] | None = None
        with redis_errors():
            for priority in range(first, -1, -1):
                key = keys.ready_list(priority)
                start = 0
                if priority == first and last_seen:
                    position: Any = await self.redis.lpos(key, last_seen)
                    start = 0 if position is None else int(position) + 1
                while ulids := await self.redis.lrange(key, start, start + page_size):
                    start += len(ulids)
                    records: Any = await self.redis.hmget(keys.ready, ulids)
                    for ulid, packed in zip(ulids, records, strict=True):
                        if packed is None:
                            continue  # stale
                        if len(tasks) == page_size:
                            assert last is not None
                            return Page(tasks=tasks, next_cursor=_encode_cursor(queue, TaskState.QUEUED, last))
                        fields = {k: v for k, v in fields_from_packed(packed).items() if k in LIST_FIELDS}
                        tasks.append(record_from_fields(text(ulid), queue, fields))
                        last = (str(priority), text(ulid))
            held = await self.redis.zcard(keys.held)
        # the held tasks come after the ready ones
        return Page(tasks=tasks, next_cursor=_HELD_CURSOR if held else "")

    async def depths(self, queue: str) -> dict[TaskState, int]:
        """Size of every index of the queue, in one round trip."""
        states = list(TaskState)
        with redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                _count_states(pipe, self.queue_keys(queue), states)
                sizes = await pipe.execute()
        return _state_counts(states, sizes)

    # Schedules: each transition one script on the schedules' slot (see schedule.py for the ticks).

    @property
    def schedule_keys(self) -> ScheduleKeys:
        return ScheduleKeys(self.keys.namespace)

    async def now_ms(self) -> int:
        """Redis TIME in milliseconds: the clock schedules are computed against."""
        with redis_errors():
            seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def put_schedule(self, spec: ScheduleSpec, anchor_ms: int, next_ms: int) -> tuple[Schedule, bool]:
        """Creates or replaces a schedule (put_schedule.lua); answers it as stored and whether it is new.

        A replaced schedule keeps its paused state and counters, and its next fire time when the
        trigger (cron, zone, interval) is unchanged; otherwise `anchor_ms` and `next_ms` apply.
        """
        reply = await self.scripts.put_schedule(
            self.schedule_keys, spec.id, template_json(spec.task), spec.cron, spec.time_zone if spec.cron else "",
            spec.interval_ms, int(spec.missed), spec.description, anchor_ms, next_ms)
        return schedule_from_reply(spec.id, reply[1:]), int(reply[0]) == 1

    async def get_schedule(self, schedule_id: str) -> Schedule:
        """Reads one schedule (HGETALL). Raises ScheduleNotFoundError."""
        with redis_errors():
            raw = await self.redis.hgetall(self.schedule_keys.schedule(schedule_id))
        if not raw:
            raise ScheduleNotFoundError(f"schedule {schedule_id}")
        return schedule_from_hash(schedule_id, raw)

    async def list_schedules(self, after: str, count: int) -> tuple[list[Schedule], str]:
        """Up to `count` schedules by id, after the id `after` ('' from the start), and the id to
        list on from ('' on the last page)."""
        keys = self.schedule_keys
        start = b"(" + after.encode() if after else b"-"
        with redis_errors():
            members: list[Any] = await self.redis.zrangebylex(keys.ids, start, b"+", 0, count + 1)
            ids = [text(i) for i in members]
            async with self.redis.pipeline(transaction=False) as pipe:
                for schedule_id in ids[:count]:
                    pipe.hgetall(keys.schedule(schedule_id))
                hashes = await pipe.execute()
        found = [schedule_from_hash(i, raw) for i, raw in zip(ids, hashes, strict=False) if raw]
        return found, ids[count - 1] if len(ids) > count else ""

    async def pause_schedule(self, schedule_id: str) -> Schedule:
        """Pauses a schedule (pause_schedule.lua). Raises ScheduleNotFoundError."""
        with _schedule_errors(schedule_id):
            reply = await self.scripts.pause_schedule(self.schedule_keys, schedule_id)
        return schedule_from_reply(schedule_id, reply)

    async def resume_schedule(self, schedule_id: str) -> Schedule:
        """Resumes a schedule (resume_schedule.lua); ticks missed meanwhile follow its policy."""
        with _schedule_errors(schedule_id):
            reply = await self.scripts.resume_schedule(self.schedule_keys, schedule_id)
        return schedule_from_reply(schedule_id, reply)

    async def delete_schedule(self, schedule_id: str) -> None:
        """Deletes a schedule (delete_schedule.lua). Raises ScheduleNotFoundError."""
        with _schedule_errors(schedule_id):
            await self.scripts.delete_schedule(self.schedule_keys, schedule_id)

    async def due_schedules(self, now_ms: int, limit: int) -> list[str]:
        """Ids of active schedules whose next fire time is at or before `now_ms`, soonest first."""
        with redis_errors():
            ids: list[Any] = await self.redis.zrangebyscore(self.schedule_keys.due, "-inf", now_ms, start=0,
                                                              num=limit)
        return [text(i) for i in ids]

    async def advance_schedule(self, schedule_id: str, expected_ms: int, next_ms: int, fired: list[int],
                               last_task_id: str) -> bool:
        """Moves a schedule from `expected_ms` to `next_ms` after a pass submitted `fired` ticks.

        A compare-and-set (advance_schedule.lua): False when another pass (or a put, pause or
        delete) changed the schedule first.
        """
        last = fired[-1] if fired else 0
        won = await self.scripts.advance_schedule(self.schedule_keys, schedule_id, expected_ms, next_ms,
                                                  len(fired), last, last_task_id if fired else "")
        return won == 1

    async def schedule_count(self) -> int:
        """How many schedules exist."""
        with redis_errors():
            return int(await self.redis.zcard(self.schedule_keys.ids))

    # Queues and their limits ---------------------------------------------------------------

    async def set_limits(self, queue: str, limits: QueueLimits) -> None:
        """Replaces a queue's limits (set_limits.lua; all zero clears them) and wakes its dispatchers."""
        await self.scripts.set_limits(self.queue_keys(queue), limits.max_running, limits.rate_per_second,
                                      limits.rate_burst)

    async def queue_info(self, queue: str) -> QueueInfo:
        """A queue's limits and how many tasks each of its indexes holds, in one round trip."""
        return (await self.queue_infos([queue]))[0]

    async def queue_infos(self, queues: list[str]) -> list[QueueInfo]:
        """`queue_info` of many queues, in one round trip."""
        states = list(TaskState)
        with redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for queue in queues:
                    keys = self.queue_keys(queue)
                    pipe.hmget(keys.limits, "max_running", "rate", "burst")
                    pipe.zcard(keys.held)
                    _count_states(pipe, keys, states)
                replies = await pipe.execute()
        infos = []
        width = 3 + len(states)
        for n, queue in enumerate(queues):
            (max_running, rate, burst), held, *sizes = replies[n * width:(n + 1) * width]
            limits = QueueLimits(max_running=int(max_running or 0), rate_per_second=float(rate or 0),
                                 rate_burst=int(burst or 0))
            infos.append(QueueInfo(queue, limits, _state_counts(states, sizes), held=int(held)))
        return infos

    async def held_count(self, queue: str) -> int:
        """How many tasks of the queue are held back by their concurrency key."""
        with redis_errors():
            return int(await self.redis.zcard(self.queue_keys(queue).held))

    # Workflows: the graph under the workflow's own tag, the outbox and pending index per queue.

    async def create_workflow(self, workflow_id: str, name: str, ttl_ms: int,
                              nodes: list[WorkflowNodeRecord]) -> bool:
        """Writes the workflow record (create_workflow.lua); False when it already existed."""
        rows = [(n.name, n.task_id, " ".join(n.parents), " ".join(n.children)) for n in nodes]
        return await self.scripts.create_workflow(self.keys.workflow(workflow_id), name, ttl_ms, rows) == 1

    async def get_workflow(self, workflow_id: str) -> WorkflowRecord:
        """Reads a workflow record (HGETALL). Raises WorkflowNotFoundError."""
        with redis_errors():
            raw = await self.redis.hgetall(self.keys.workflow(workflow_id).record)
        if not raw:
            raise WorkflowNotFoundError(f"workflow {workflow_id}")
        return workflow_from_hash(workflow_id, raw)

    async def get_many(self, tasks: list[tuple[str, str]]) -> list[TaskRecord | None]:
        """Reads tasks given as (queue, ulid), one script call per queue (read.lua), the queues'
        calls at once; None for a task whose record is gone. A ready task is read from its
        packed record in `ready`: it moves between that and its hash within one script call, so
        the read finds it on one side or the other."""
        if not tasks:
            return []
        by_queue: dict[str, list[int]] = defaultdict(list)  # queue -> indexes of its tasks
        for i, (queue, _) in enumerate(tasks):
            by_queue[queue].append(i)
        records: list[TaskRecord | None] = [None] * len(tasks)

        async def read(queue: str, indexes: list[int]) -> None:
            ulids = [tasks[i][1] for i in indexes]
            for i, ulid, fields in zip(indexes, ulids, await self._fields_anywhere(queue, ulids), strict=True):
                records[i] = record_from_fields(ulid, queue, fields) if fields else None

        if len(by_queue) == 1:  # the usual case: no gather
            await read(*next(iter(by_queue.items())))
        else:
            await asyncio.gather(*(read(queue, indexes) for queue, indexes in by_queue.items()))
        return records

    async def _fields_anywhere(self, queue: str, ulids: list[str]) -> list[dict[str, bytes] | None]:
        """Tasks' fields from their hashes or, for ready ones, from their packed records (one
        script call); None for a task that has neither."""
        out: list[dict[str, bytes] | None] = []
        for found in await self.scripts.read(self.queue_keys(queue), ulids):
            if isinstance(found, list):
                out.append({text(found[j]): found[j + 1] for j in range(0, len(found), 2)})
            else:
                out.append(fields_from_packed(found) if found else None)
        return out

    async def settle_node(self, workflow_id: str, node: str, state: TaskState) -> Settlement:
        """Records a node's final state and answers what follows (settle_node.lua); idempotent."""
        wf_state, ended, ready, cancel = await self.scripts.settle_node(
            self.keys.workflow(workflow_id), node, state.label)
        if not wf_state:
            return Settlement(state=None)
        return Settlement(state=WorkflowState.from_label(text(wf_state)), ended=int(ended) == 1,
                          ready=tuple(text(t) for t in ready),
                          cancel=tuple((text(cancel[i]), text(cancel[i + 1])) for i in range(0, len(cancel), 2)))

    async def cancel_workflow(self, workflow_id: str, reason: str) -> list[str]:
        """Ends a running workflow CANCELLED (cancel_workflow.lua); the task ids of its unfinished
        nodes, which the caller cancels. Raises WorkflowNotFoundError, WorkflowTerminalError."""
        try:
            return [text(t) for t in await self.scripts.cancel_workflow(self.keys.workflow(workflow_id), reason)]
        except TaskNotFoundError:
            raise WorkflowNotFoundError(f"workflow {workflow_id}") from None
        except TaskTerminalError as exc:
            raise WorkflowTerminalError(str(exc)) from None

    async def unblock(self, queue: str, items: list[tuple[str, bytes]]) -> list[str]:
        """Releases pending nodes of one queue (unblock.lua): per item ("queued", "scheduled") when
        released now, else the task's current state ("gone" when its record does not exist)."""
        if not items:
            return []
        return [text(a) for a in await self.scripts.unblock(self.queue_keys(queue), items)]

    async def claim_workflow_key(self, key: str, workflow_id: str, ttl_ms: int) -> str:
        """Maps an idempotency key to `workflow_id` unless it is mapped already; the id it maps to."""
        name = self.keys.workflow_idempotency(key)
        with redis_errors():
            if await self.redis.set(name, workflow_id, nx=True, px=ttl_ms):
                return workflow_id
            existing = await self.redis.get(name)
        return text(existing) if existing is not None else workflow_id

    async def node_links(self, queue: str, ulid: str) -> NodeLinks | None:
        """A task's state and workflow links; None when its record is gone."""
        [fields] = await self._fields_anywhere(queue, [ulid])
        if fields is None:
            return None
        state, wf, node, parents, rpass = (fields.get(k) for k in ("state", "wf", "node", "parents", "rpass"))
        return NodeLinks(state=TaskState.from_label(text(state)), workflow_id=text(wf), node=text(node),
                         parent_ids=tuple(text(parents).split()), result_passing=int(rpass or 0))

    async def parent_results(self, tasks: list[tuple[str, str]]) -> list[tuple[str, bytes, str]]:
        """(node name, result, result media type) of finished parents given as (queue, ulid), in one
        pipelined round trip; empty values for a parent whose record is gone."""
        if not tasks:
            return []
        with redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for queue, ulid in tasks:
                    pipe.hgetall(self.queue_keys(queue).task(ulid))
                replies = await pipe.execute()
        out = []
        for raw in replies:
            fields = {text(k): v for k, v in raw.items()}
            media_type = text(fields.get("rtype"), DEFAULT_CONTENT_TYPE if fields else "")
            out.append((text(fields.get("node")), joined(fields.get, "result", "r", "rn"), media_type))
        return out

    async def outbox(self, queue: str, before_ms: int | None, limit: int) -> list[str]:
        """Ulids of a queue's ended workflow nodes whose workflow has not advanced yet, oldest
        first; with `before_ms`, only those that ended at or before it (Redis clock)."""
        high: str | int = "+inf" if before_ms is None else before_ms
        with redis_errors():
            members: Any = await self.redis.zrangebyscore(self.queue_keys(queue).wf_outbox, "-inf", high,
                                                                  start=0, num=limit)
        return [text(m) for m in members]

    async def outbox_done(self, queue: str, ulids: list[str]) -> None:
        """Drops outbox entries whose workflow has advanced (idempotent)."""
        if ulids:
            with redis_errors():
                await self.redis.zrem(self.queue_keys(queue).wf_outbox, *ulids)

    async def pending_page(self, queue: str, after: tuple[int, str] | None, before_ms: int,
                           limit: int) -> list[tuple[int, str]]:
        """(created ms, ulid) of pending nodes created at or before `before_ms`, after `after` in
        index order (the reconciler's cursor)."""
        low: str | int = "-inf" if after is None else after[0]
        with redis_errors():
            entries: Any = await self.redis.zrangebyscore(
                self.queue_keys(queue).pending, low, before_ms, start=0, num=limit + 1000, withscores=True)
        out = [(int(score), text(member)) for member, score in entries]
        if after is not None:
            out = [e for e in out if e > after]
        return out[:limit]


@contextlib.contextmanager
def _schedule_errors(schedule_id: str) -> Iterator[None]:
    """A script's NOT_FOUND reply, for a schedule, as ScheduleNotFoundError."""
    try:
        yield
    except TaskNotFoundError:
        raise ScheduleNotFoundError(f"schedule {schedule_id}") from None


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


def _count_states(pipe: Any, keys: QueueKeys, states: list[TaskState]) -> None:
    """Queues the size of every state's index on `pipe`, then that of `queued`, where brokers
    before 0.8 kept ready tasks (until promote.lua has moved them): len(states) + 1 replies."""
    for state in states:
        if state is TaskState.QUEUED:
            pipe.hlen(keys.ready)
        else:
            pipe.zcard(keys.by_state(state))
    pipe.zcard(keys.queued)


def _state_counts(states: list[TaskState], sizes: list[Any]) -> dict[TaskState, int]:
    """The counts of _count_states' replies; ready tasks of an older broker count as queued."""
    counts = {state: int(size) for state, size in zip(states, sizes[:-1], strict=True)}
    counts[TaskState.QUEUED] += int(sizes[-1])
    return counts


def _check_queue(queue: str, tasks: list[NewTask]) -> None:
    for task in tasks:
        if task.queue != queue:
            raise ValueError(f"task {task.ulid} belongs to queue {task.queue!r}, not {queue!r}")


# A state label as a script answers it (bytes), and as text; b'' (a record already gone) has none.
_STATES: dict[bytes | str, TaskState] = {
    **{state.label: state for state in TaskState}, **{state.label.encode(): state for state in TaskState}}


def _enqueued(flat: list[Any], tasks: list[NewTask]) -> list[EnqueueResult]:
    """enqueue.lua's answer: one entry per task, a state label or, for a duplicate,
    "<state> <holder ulid> <kind>"."""
    if len(flat) != len(tasks):
        raise ValueError(f"enqueue answered {len(flat)} entries for {len(tasks)} tasks")
    results = []
    for answer, task in zip(flat, tasks, strict=True):
        state = _STATES.get(answer)
        if state is not None:
            results.append(EnqueueResult(task.ulid, state))
        else:
            label, ulid, kind = text(answer).split(" ")
            results.append(EnqueueResult(ulid, _STATES.get(label), True, kind))
    return results


def _lease_batch(queue: str, reply: list[Any]) -> LeaseBatch:
    leased, expired = leased_from_reply(queue, reply)
    return LeaseBatch(leased, expired, int(reply[3]), int(reply[4]) == 1)

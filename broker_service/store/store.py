"""The store: every task transition as one Lua script call, through typed async methods.

CONTRACT for the implementation (keep signatures; fill in bodies):
- Every method that changes state calls exactly one script (batched methods: one script call
  per queue), loaded once with SCRIPT LOAD and called with EVALSHA (reloading on NOSCRIPT).
- Every redis.exceptions.ConnectionError/TimeoutError (and BusyLoadingError, ReadOnlyError)
  is raised as StoreUnavailableError; script error replies map by their first word
  (NOT_FOUND, TERMINAL, STALE) to the domain errors.
- Times come from Redis TIME inside the scripts.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from broker_service.domain import (
    Completion,
    Failure,
    FailOutcome,
    Lease,
    LeasedTask,
    LeaseState,
    NewTask,
    ReapResult,
    TaskRecord,
    TaskState,
)
from broker_service.store.keys import GlobalKeys, QueueKeys


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """What an enqueue did to one task."""

    ulid: str
    state: TaskState  # QUEUED or SCHEDULED


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing."""

    tasks: list[TaskRecord]
    next_cursor: str  # empty on the last page


class Store:
    """Async access to Conveyor's Redis data. One instance per broker; safe for concurrent use."""

    def __init__(self, redis: Redis, *, namespace: str = "conveyor",
                 dead_letter_ttl_ms: int = 7 * 86_400_000, dead_letter_max: int = 10_000) -> None:
        self.redis = redis
        self.keys = GlobalKeys(namespace)
        self.dead_letter_ttl_ms = dead_letter_ttl_ms
        self.dead_letter_max = dead_letter_max

    def queue_keys(self, queue: str) -> QueueKeys:
        return self.keys.queue(queue)

    async def load_scripts(self) -> None:
        """SCRIPT LOADs every script (call at start and after a Redis restart)."""
        raise NotImplementedError

    async def ping(self) -> None:
        """Raises StoreUnavailableError when Redis does not answer."""
        raise NotImplementedError

    async def eviction_policy(self) -> str | None:
        """Redis's maxmemory-policy, or None when CONFIG GET is not allowed."""
        raise NotImplementedError

    async def register_queues(self, queues: list[str]) -> None:
        """Adds queue names to the global queue set (idempotent)."""
        raise NotImplementedError

    async def queues(self) -> list[str]:
        """Every known queue name, sorted."""
        raise NotImplementedError

    async def enqueue(self, queue: str, tasks: list[NewTask]) -> list[EnqueueResult]:
        """Writes tasks of one queue atomically (script enqueue.lua), in order.

        A task with run_at_ms or delay_ms in the future (Redis clock) goes to `scheduled`,
        else to `queued`. Sets start_by when start_timeout_ms > 0 (due + timeout). Publishes
        `wake` when `queued` was empty before and now is not.
        """
        raise NotImplementedError

    async def get(self, queue: str, ulid: str) -> TaskRecord:
        """Reads one task (HGETALL). Raises TaskNotFoundError."""
        raise NotImplementedError

    async def lease(self, queue: str, count: int, worker_id: str) -> tuple[list[LeasedTask], list[str]]:
        """Pops up to `count` ready tasks by priority and leases them to `worker_id` (lease.lua).

        Each leased task: attempt += 1, state running, token = INCR seq, started = now,
        exec_dl = now + timeout (if any), score in `running` = min(now + lease, exec_dl).
        A popped task past its start_by deadline is EXPIRED instead (reason "schedule_to_start")
        and does not count toward `count`. Returns (leased, expired ulids). Publishes `running`.
        """
        raise NotImplementedError

    async def extend(self, queue: str, leases: list[Lease], worker_id: str) -> list[LeaseState]:
        """Renews leases (extend.lua); also the re-claim of a reconnecting worker.

        Per lease, in order: STALE if the task is not running or the token differs; otherwise
        the score becomes min(now + lease, exec_dl), `worker` is set, and the answer is
        CANCEL_REQUESTED when `cancel` is set, else ACTIVE.
        """
        raise NotImplementedError

    async def complete(self, queue: str, items: list[Completion]) -> list[int | None]:
        """Stores results (complete.lua): state succeeded, result kept `ttl` ms.

        Per item: the run time in ms, or None when the token is stale. Completing again with
        the same token after success answers the run time again (idempotent), never a second
        write. Publishes `succeeded`.
        """
        raise NotImplementedError

    async def fail(self, queue: str, items: list[Failure], random_fractions: list[float]) -> list[FailOutcome]:
        """Records failed attempts (fail.lua).

        Per item (STALE if the token is not current): stores the error; CANCELLED if a cancel
        was requested; DEAD (state failed, into the dead-letter set, expires after the
        dead-letter TTL, set trimmed to dead_letter_max) if not retryable or attempts are
        exhausted; otherwise RETRYING: scheduled after retry_after_ms if >= 0, else after the
        task's backoff for this attempt using random_fractions[i] for jitter (0 delay goes
        straight to queued). Publishes the matching kinds.
        """
        raise NotImplementedError

    async def cancelled(self, queue: str, leases: list[Lease]) -> list[bool]:
        """A worker stopped running tasks because they were cancelled (cancel_running.lua).

        Per lease: True if it was current (state cancelled, kept `ttl` ms), False if stale.
        """
        raise NotImplementedError

    async def release(self, queue: str, leases: list[Lease], reason: str, started: bool) -> list[bool]:
        """Hands leased tasks back to `queued` at once (release.lua), keeping their place.

        Per lease: True if current. When `started` is False the attempt is not counted
        (attempt -= 1). A task with a cancel request goes to cancelled instead. Sets `reason`.
        Publishes `queued`.
        """
        raise NotImplementedError

    async def progress(self, queue: str, leases: list[Lease], values: list[tuple[float, str]]) -> list[bool]:
        """Stores progress of running attempts (progress.lua); per lease True if current."""
        raise NotImplementedError

    async def cancel(self, queue: str, ulid: str, reason: str) -> TaskState:
        """Cancels a task (cancel.lua).

        SCHEDULED, QUEUED or PENDING: CANCELLED at once (removed from its index, kept `ttl`
        ms), publishes `cancelled`, returns CANCELLED. RUNNING: sets `cancel`, publishes
        `cancel`, returns RUNNING. Terminal: TaskTerminalError. Unknown: TaskNotFoundError.
        """
        raise NotImplementedError

    async def reap(self, queue: str, limit: int, random_fraction: float) -> ReapResult:
        """Handles running tasks whose score is past (reap.lua), at most `limit`.

        Past exec_dl: the attempt fails with error type TimeoutError (retried per policy, or
        dead). Otherwise the lease expired: back to `queued` (reason lease_expired), or dead
        when attempts are exhausted (error type LeaseExpired). A cancel request wins: cancelled.
        """
        raise NotImplementedError

    async def promote(self, queue: str, limit: int) -> int:
        """Moves due tasks from `scheduled` to `queued` (promote.lua); returns how many."""
        raise NotImplementedError

    async def expire(self, queue: str, limit: int) -> list[str]:
        """Ends waiting tasks past their schedule-to-start deadline as EXPIRED (expire.lua)."""
        raise NotImplementedError

    async def trim(self, queue: str, limit: int) -> int:
        """Drops index entries of finished tasks whose record has expired (trim.lua)."""
        raise NotImplementedError

    async def list_tasks(self, queue: str, state: TaskState, page_size: int, cursor: str) -> Page:
        """Lists a queue's tasks in one state in index order (payload and result left out).

        The cursor is opaque to callers: it survives concurrent inserts, so a task present
        throughout the listing is seen exactly once. A malformed cursor raises ValueError.
        """
        raise NotImplementedError

    async def depths(self, queue: str) -> dict[TaskState, int]:
        """Size of every index of the queue, in one round trip."""
        raise NotImplementedError

"""The task record, its states, ids, retry policy and the store's errors (no grpc, no redis here)."""

from __future__ import annotations

import enum
import os
import re
import threading
import time
from dataclasses import dataclass, field

ULID_LENGTH = 26
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two Crockford digits per 10 bits, looked up at once: half the steps of one digit at a time.
_DIGIT_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]


def _crockford(value: int, pairs: int) -> str:
    """`value` as 2 * `pairs` Crockford digits (it must fit in 10 * `pairs` bits)."""
    return "".join([_DIGIT_PAIRS[(value >> shift) & 1023] for shift in range(10 * pairs - 10, -1, -10)])
QUEUE_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
TASK_ID_PATTERN = re.compile(r"([0-9A-HJKMNP-TV-Z]{26})@([A-Za-z0-9_.\-]{1,128})")
DEFAULT_CONTENT_TYPE = "application/json"


class TaskState(enum.IntEnum):
    """Lifecycle states; the numbers are the wire values of conveyor.v1.TaskState."""

    SCHEDULED = 1
    QUEUED = 2
    RUNNING = 3
    SUCCEEDED = 4
    FAILED = 5
    CANCELLED = 6
    EXPIRED = 7
    PENDING = 8

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def label(self) -> str:
        """Lower-case name, as stored in Redis and used in metric labels."""
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> TaskState:
        return cls[label.upper()]


TERMINAL_STATES = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.EXPIRED})


class LeaseState(enum.IntEnum):
    """What the store says of a presented lease; wire values of conveyor.v1.LeaseState."""

    ACTIVE = 1
    STALE = 2
    CANCEL_REQUESTED = 3


class RedeliveryReason(enum.StrEnum):
    """Why a task went back to its queue (a label of the redeliveries metric)."""

    LEASE_EXPIRED = "lease_expired"
    WORKER_SHUTDOWN = "worker_shutdown"
    BROKER_DRAINED = "broker_drained"
    NACK = "nack"


class _UlidFactory:
    """Makes ULIDs that sort in creation order, also within one millisecond of one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_rand = 0
        self._prefix = ""

    def _reserve(self, count: int) -> tuple[str, int]:
        """The time prefix and the first of `count` random values: one clock read; within one
        millisecond the random part counts up from the last one handed out."""
        with self._lock:
            ms = time.time_ns() // 1_000_000
            if ms <= self._last_ms:
                ms = self._last_ms
                first = self._last_rand + 1
            else:
                first = int.from_bytes(os.urandom(10), "big") >> 1  # room to count up within a millisecond
                self._prefix = _crockford(ms, 5)  # 48-bit time: the first 10 digits
            self._last_ms, self._last_rand = ms, first + count - 1
            return self._prefix, first

    def __call__(self) -> str:
        prefix, rand = self._reserve(1)
        return prefix + _crockford(rand, 8)  # 80 random bits: the last 16

    def many(self, count: int) -> list[str]:
        """`count` ULIDs in one step: one clock read, then the random part counted up."""
        prefix, first = self._reserve(count)
        ulids = []
        high = -1
        head = ""
        pairs = _DIGIT_PAIRS
        for value in range(first, first + count):
            if value >> 40 != high:  # the upper 8 random digits change once in 2**40 counts
                high = value >> 40
                head = prefix + _crockford(high, 4)
            ulids.append(head + pairs[(value >> 30) & 1023] + pairs[(value >> 20) & 1023]
                         + pairs[(value >> 10) & 1023] + pairs[value & 1023])
        return ulids


new_ulid = _UlidFactory()


def make_task_id(ulid: str, queue: str) -> str:
    """A task id carries its queue, so any broker finds its keys without a lookup."""
    return f"{ulid}@{queue}"


def parse_task_id(task_id: str) -> tuple[str, str]:
    """Splits a task id into (ulid, queue); raises ValueError when malformed."""
    match = TASK_ID_PATTERN.fullmatch(task_id)
    if match is None:
        raise ValueError(f"malformed task id {task_id[:200]!r}: expected '<26-char ulid>@<queue>'")
    return match.group(1), match.group(2)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How failed attempts are retried; delays in milliseconds."""

    max_attempts: int = 3
    initial_backoff_ms: int = 1_000
    max_backoff_ms: int = 600_000
    multiplier: float = 2.0
    jitter: float = 0.0

    def backoff_ms(self, attempt: int, random_fraction: float) -> int:
        """The delay after failed attempt number `attempt` (from 1); `random_fraction` in [0, 1)."""
        raw = min(self.max_backoff_ms, self.initial_backoff_ms * self.multiplier ** max(0, attempt - 1))
        return int(raw * (1.0 - self.jitter * random_fraction))


# Not frozen: a frozen dataclass sets each of these fields through object.__setattr__, which made
# building one cost 2.6 µs against 0.4 µs, paid per task of every batch. Nothing changes a
# NewTask once built (dataclasses.replace makes a new one).
@dataclass(slots=True)
class NewTask:
    """A validated submission, ready for the store. Times are Redis-clock milliseconds."""

    ulid: str
    queue: str
    name: str
    payload: bytes = b""
    content_type: str = DEFAULT_CONTENT_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    priority: int = 0
    run_at_ms: int | None = None
    delay_ms: int = 0
    retry: RetryPolicy = RetryPolicy()
    timeout_ms: int = 0
    lease_ms: int = 30_000
    start_timeout_ms: int = 0
    result_ttl_ms: int = 86_400_000
    # Locks and limits: empty key = none.
    idempotency_key: str = ""
    idempotency_ttl_ms: int = 86_400_000
    unique_key: str = ""
    concurrency_key: str = ""
    concurrency_limit: int = 0
    # The schedule whose tick submitted it.
    schedule_id: str = ""
    # Workflow node: the task waits PENDING for `parent_ids` when it has any.
    workflow_id: str = ""
    workflow_node: str = ""
    parent_ids: tuple[str, ...] = ()
    result_passing: int = 0

    @property
    def task_id(self) -> str:
        return make_task_id(self.ulid, self.queue)


@dataclass(frozen=True, slots=True)
class TaskError:
    """An attempt's error, kept as text."""

    type: str
    message: str
    traceback: str = ""
    retryable: bool = True


@dataclass(slots=True)
class TaskRecord:
    """One task as stored. Times are Redis-clock milliseconds since the epoch, 0 when unset."""

    ulid: str
    queue: str
    name: str
    state: TaskState
    payload: bytes = b""
    content_type: str = DEFAULT_CONTENT_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    priority: int = 0
    attempt: int = 0
    retry: RetryPolicy = RetryPolicy()
    timeout_ms: int = 0
    lease_ms: int = 30_000
    result_ttl_ms: int = 86_400_000
    created_ms: int = 0
    scheduled_ms: int = 0
    started_ms: int = 0
    finished_ms: int = 0
    start_by_ms: int = 0
    result: bytes = b""
    result_content_type: str = ""
    error: TaskError | None = None
    reason: str = ""
    cancel_requested: bool = False
    progress: float = 0.0
    progress_message: str = ""
    worker_id: str = ""
    lease_token: int = 0
    idempotency_key: str = ""
    unique_key: str = ""
    concurrency_key: str = ""
    concurrency_limit: int = 0
    schedule_id: str = ""
    workflow_id: str = ""
    workflow_node: str = ""
    parent_ids: tuple[str, ...] = ()

    @property
    def task_id(self) -> str:
        return make_task_id(self.ulid, self.queue)


@dataclass(frozen=True, slots=True)
class ParentResult:
    """The result of a workflow node's parent, handed to the node with its lease."""

    task_id: str
    node: str
    payload: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class LeasedTask:
    """A task handed to a worker under a fresh lease."""

    ulid: str
    queue: str
    name: str
    payload: bytes
    content_type: str
    headers: dict[str, str]
    attempt: int
    max_attempts: int
    lease_token: int
    lease_ms: int
    timeout_ms: int
    queued_at_ms: int
    started_ms: int
    # A workflow node: its parents' results and how to pass them (ResultPassing number).
    parent_results: tuple[ParentResult, ...] = ()
    result_passing: int = 0

    @property
    def task_id(self) -> str:
        return make_task_id(self.ulid, self.queue)


@dataclass(frozen=True, slots=True)
class Lease:
    """A (task, token) pair presented by a worker."""

    ulid: str
    token: int


@dataclass(frozen=True, slots=True)
class Completion:
    """A successful attempt's result."""

    ulid: str
    token: int
    result: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed attempt. `retry_after_ms` < 0 means: use the task's backoff policy."""

    ulid: str
    token: int
    error: TaskError
    retry_after_ms: int = -1


class FailOutcome(enum.StrEnum):
    """What a failure did to its task."""

    RETRYING = "retrying"
    DEAD = "dead"
    CANCELLED = "cancelled"
    STALE = "stale"


@dataclass(slots=True)
class ReapResult:
    """What one sweep of expired leases did."""

    requeued: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """Limits of a whole queue, kept in the store (0: no limit)."""

    max_running: int = 0
    rate_per_second: float = 0.0
    rate_burst: int = 0  # size of the rate's token bucket; 0 means max(1, rate_per_second)


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """A queue as it stands: its limits and how many tasks each state holds."""

    name: str
    limits: QueueLimits
    counts: dict[TaskState, int]
    held: int = 0  # queued tasks held back by their concurrency key (not in counts[QUEUED])


class StoreError(Exception):
    """Base of the store's errors; each maps to one gRPC status in the API layer."""


class TaskNotFoundError(StoreError):
    """No task with that id (or its record expired)."""


class TaskTerminalError(StoreError):
    """The task already finished."""


class StaleLeaseError(StoreError):
    """The lease token is not the current one."""


class StoreUnavailableError(StoreError):
    """Redis cannot be reached or timed out."""


# Workflows: a DAG of tasks released by the broker as their parents succeed.

class WorkflowState(enum.IntEnum):
    """Where a workflow stands; the numbers are the wire values of conveyor.v1.WorkflowState."""

    RUNNING = 1
    SUCCEEDED = 2
    FAILED = 3
    CANCELLED = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> WorkflowState:
        return cls[label.upper()]


@dataclass(frozen=True, slots=True)
class WorkflowNodeSpec:
    """A validated node: its name, its task (PENDING until released) and its parents' names."""

    name: str
    task: NewTask
    parents: tuple[str, ...] = ()


@dataclass(slots=True)
class WorkflowNodeRecord:
    """One node as recorded by its workflow. `settled` is its final state once recorded, else None."""

    name: str
    task_id: str
    parents: tuple[str, ...]
    children: tuple[str, ...]
    settled: TaskState | None = None


@dataclass(slots=True)
class WorkflowRecord:
    """A workflow as stored. Times are Redis-clock milliseconds, 0 when unset."""

    workflow_id: str
    name: str
    state: WorkflowState
    nodes: list[WorkflowNodeRecord]
    created_ms: int = 0
    finished_ms: int = 0
    reason: str = ""

    @property
    def output_nodes(self) -> list[str]:
        return [node.name for node in self.nodes if not node.children]


@dataclass(frozen=True, slots=True)
class Settlement:
    """What settling a node answered: the workflow's state, whether this call ended it, the
    children to release and the descendants to cancel (task id, reason)."""

    state: WorkflowState | None  # None: the workflow record is gone
    ended: bool = False
    ready: tuple[str, ...] = ()
    cancel: tuple[tuple[str, str], ...] = ()


class WorkflowNotFoundError(StoreError):
    """No workflow with that id (or its record expired)."""


class WorkflowTerminalError(StoreError):
    """The workflow already finished."""

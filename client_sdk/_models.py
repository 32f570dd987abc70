"""Plain Python views of what the broker reports: task states, task records and remote errors."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

__all__ = ["RemoteError", "RetryPolicy", "TaskInfo", "TaskState"]


class TaskState(enum.IntEnum):
    """Where a task stands in its lifecycle; the values are the wire values of conveyor.v1.TaskState.

    ``UNSPECIFIED`` is never reported for a stored task; it stands in for a state this SDK does
    not know (a newer broker).
    """

    UNSPECIFIED = 0
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
        """True for SUCCEEDED, FAILED, CANCELLED and EXPIRED: the task will not change again."""
        return self in _TERMINAL

    @property
    def label(self) -> str:
        """The lower-case name, e.g. ``"queued"``."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: TaskState | str | int) -> TaskState:
        """Reads a state given as a member, a name in any case (``"queued"``) or a wire number.

        Args:
            value: The state to read.

        Returns:
            The matching member.

        Raises:
            ValueError: If no state matches.
        """
        if isinstance(value, TaskState):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                names = ", ".join(s.label for s in cls if s is not cls.UNSPECIFIED)
                raise ValueError(f"unknown task state {value!r}; expected one of {names}") from None
        return cls(value)


_TERMINAL = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.EXPIRED})


@dataclass(frozen=True, slots=True)
class RemoteError:
    """The error a failed attempt reported, as text (the SDK never rebuilds exception objects).

    Attributes:
        type: The error's type name, e.g. ``"ValueError"``.
        message: The error's message.
        traceback: The traceback text of the failing attempt, or ``""``.
        retryable: False when the worker said the error must not be retried.
    """

    type: str
    message: str
    traceback: str = ""
    retryable: bool = True

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The retry policy in force for a task, broker defaults filled in.

    Attributes:
        max_attempts: Attempts in all, the first one included.
        initial_backoff: Delay before the first retry, or None when the broker left it unset.
        max_backoff: Upper bound of any retry delay, or None when unset.
        multiplier: Growth factor between retries (0 means the broker default).
        jitter: Fraction of each delay that is randomised away, 0 to 1.
    """

    max_attempts: int = 0
    initial_backoff: timedelta | None = None
    max_backoff: timedelta | None = None
    multiplier: float = 0.0
    jitter: float = 0.0


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """One task as the broker stores it, with Python types (UTC-aware datetimes, timedeltas, bytes).

    Times and durations the broker left unset are None.

    Attributes:
        id: Task id, ``"<ulid>@<queue>"``.
        queue: The queue the task waits in.
        name: The task name a worker resolves to a function.
        state: Current state.
        payload: Opaque payload (left empty by list calls).
        content_type: Media type of ``payload``.
        headers: String headers carried to the worker.
        priority: 0 (lowest) to 9 (highest).
        attempt: Attempts started so far.
        retry_policy: The retry policy in force.
        execution_timeout: Longest one attempt may run.
        lease_duration: How long a silent worker keeps the task.
        created_at: When the task was submitted.
        scheduled_at: When the task is (or was) due to run.
        started_at: When the current or last attempt started.
        finished_at: When the task reached a terminal state.
        start_deadline: The deadline to start by (schedule-to-start).
        result: Result payload of a SUCCEEDED task.
        result_content_type: Media type of ``result``.
        error: The last attempt's error, if an attempt failed.
        reason: Why the task was last put back or ended without a result.
        cancel_requested: True while a cancel of a RUNNING task waits for its worker.
        progress: Last progress reported by the running attempt, 0 to 1.
        progress_message: Free-text progress message.
        worker_id: Id of the worker running (or that last ran) the task.
        result_ttl: How long the result is kept after the task finishes.
        idempotency_key: The idempotency key it was submitted with, or ``""``.
        unique_key: The unique key it holds while waiting or running, or ``""``.
        concurrency_key: The concurrency key that limits how many such tasks run at once, or ``""``.
        concurrency_limit: Most tasks with ``concurrency_key`` running at once (0 without a key).
        schedule_id: The schedule whose tick submitted the task, or ``""``.
        workflow_id: The workflow this task is a node of; empty for a lone task.
        workflow_node: The node's name within its workflow.
        parent_ids: Ids of the tasks it waits for (its parents in the workflow).
    """

    id: str
    queue: str
    name: str
    state: TaskState
    payload: bytes = b""
    content_type: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    priority: int = 0
    attempt: int = 0
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    execution_timeout: timedelta | None = None
    lease_duration: timedelta | None = None
    created_at: datetime | None = None
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    start_deadline: datetime | None = None
    result: bytes = b""
    result_content_type: str = ""
    error: RemoteError | None = None
    reason: str = ""
    cancel_requested: bool = False
    progress: float = 0.0
    progress_message: str = ""
    worker_id: str = ""
    result_ttl: timedelta | None = None
    idempotency_key: str = ""
    unique_key: str = ""
    concurrency_key: str = ""
    concurrency_limit: int = 0
    schedule_id: str = ""
    # Workflow links.
    workflow_id: str = ""
    workflow_node: str = ""
    parent_ids: tuple[str, ...] = ()

    @property
    def max_attempts(self) -> int:
        """Attempts allowed in all (from the retry policy)."""
        return self.retry_policy.max_attempts

    @property
    def terminal(self) -> bool:
        """True once the task has finished for good."""
        return self.state.terminal

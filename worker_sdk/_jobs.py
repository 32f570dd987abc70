"""One assignment as the worker tracks it, and the ways an attempt can end (no protobuf here)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

from worker_sdk.context import TaskContext


@dataclass(frozen=True, slots=True)
class Succeeded:
    """The function returned; `payload` is its encoded result."""

    payload: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class Failed:
    """The function raised (or could not be called)."""

    type: str
    message: str
    traceback: str = ""
    retryable: bool = True
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The attempt stopped because it was asked to."""


Result = Succeeded | Failed | Cancelled
ProgressReporter = Callable[["Job", float, str], None]


class CancelFlag:
    """A flag a task's code polls to learn it should stop; set from any thread, never cleared.

    Lighter than a `threading.Event` (one per task): nothing waits on it, code only polls it.
    """

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        """Raises the flag."""
        self._set = True

    def is_set(self) -> bool:
        """True once the flag is raised."""
        return self._set


@dataclass(eq=False, slots=True)
class Job:
    """A task pushed to this worker, from arrival until its slot is free again.

    The slot stays taken while the function runs, even once the attempt is reported (a sync
    function past its timeout keeps its thread) or lost (its lease went stale), so credits
    never promise a thread that is still busy.
    """

    task_id: str
    lease_token: int
    name: str
    queue: str
    payload: bytes
    content_type: str
    headers: Mapping[str, str]
    attempt: int
    max_attempts: int
    lease_duration: float | None
    timeout: float | None
    # A workflow node: its parents' results as (payload, content type), and how they are passed
    # (ResultPassing: 2 the one result first, 3 the list of them first; 0 or 1 not at all).
    parent_results: tuple[tuple[bytes, str], ...] = ()
    result_passing: int = 0
    cancel_event: CancelFlag = field(default_factory=CancelFlag)
    # Set once the function starts or is prevented from starting; guarded by `_lock`.
    started: bool = False
    withheld: bool = False
    # The attempt's outcome has been produced (or deliberately given up): no other is sent.
    reported: bool = False
    # The lease is no longer ours (stale, released or timed out): whatever the function
    # returns is dropped.
    lost: bool = False
    # The asyncio task of an `async def` function, so a cancel can interrupt it.
    aio_task: asyncio.Task[object] | None = None
    # The execution timeout of a sync function, armed on the loop when it is queued.
    timer: asyncio.TimerHandle | None = None
    # The sync function ran past its execution timeout: that was its outcome.
    timed_out: bool = False
    # Where `report_progress` goes (any thread), and the context built on first request.
    progress: ProgressReporter | None = None
    _context: TaskContext | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def running(self) -> bool:
        """True while the attempt is ours and unreported: its lease must be renewed."""
        return not (self.reported or self.lost)

    def begin(self) -> bool:
        """Marks the function as started; False if the job was withheld first."""
        with self._lock:
            if self.withheld:
                return False
            self.started = True
            return True

    def withhold(self) -> bool:
        """Prevents a job that has not started from starting; False if it already started."""
        with self._lock:
            if self.started:
                return False
            self.withheld = True
            return True

    def task_context(self) -> TaskContext:
        """What `current_task()` returns while this job runs; built once, when first asked for."""
        context = self._context
        if context is None:
            progress = self.progress
            context = TaskContext(id=self.task_id, name=self.name, queue=self.queue, attempt=self.attempt,
                                  max_attempts=self.max_attempts, headers=self.headers,
                                  _cancel_event=self.cancel_event,
                                  _progress_sink=partial(progress, self) if progress is not None else None)
            self._context = context
        return context

    def request_cancel(self) -> None:
        """Asks the function to stop: sets the flag sync code polls, cancels async code."""
        self.cancel_event.set()
        if self.aio_task is not None and not self.aio_task.done():
            self.aio_task.cancel()

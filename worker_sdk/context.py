"""The running task's context: `current_task()` and `TaskContext`."""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["TaskContext", "current_task"]

MAX_PROGRESS_MESSAGE = 1024

ProgressSink = Callable[[float, str], None]


class _Flag(Protocol):
    def is_set(self) -> bool: ...


class _NeverSet:
    def is_set(self) -> bool:
        return False


@dataclass(frozen=True)
class TaskContext:
    """What a running task knows of itself. Get it with :func:`current_task`.

    Attributes:
        id: Task id, ``"<ulid>@<queue>"``.
        name: Task name the worker resolved to a function.
        queue: Queue the task came from.
        attempt: This attempt's number, from 1.
        max_attempts: Attempts allowed in all.
        headers: Headers given at submit.
    """

    id: str
    name: str
    queue: str
    attempt: int
    max_attempts: int
    headers: Mapping[str, str]
    _cancel_event: _Flag = field(default_factory=_NeverSet, repr=False, compare=False)
    _progress_sink: ProgressSink | None = field(default=None, repr=False, compare=False)

    @property
    def cancelled(self) -> bool:
        """True once the task should stop: cancelled, its lease lost, timed out or the worker leaving.

        Long-running sync tasks should check it between steps and return (or raise) when it
        turns True; the attempt is then reported as cancelled.
        """
        return self._cancel_event.is_set()

    def report_progress(self, fraction: float, message: str = "") -> None:
        """Reports how far the task has come; thread-safe, cheap, batched on the stream.

        Only the latest report of a task is sent when several arrive between two writes.

        Args:
            fraction: Fraction done, clamped to 0..1.
            message: Free text, truncated to 1024 characters.
        """
        if math.isnan(fraction):
            raise ValueError("progress fraction must be a number between 0 and 1, not NaN")
        if self._progress_sink is not None:
            self._progress_sink(min(1.0, max(0.0, float(fraction))), message[:MAX_PROGRESS_MESSAGE])


class ContextSource(Protocol):
    """Something that builds a task's context only when the task asks for it."""

    def task_context(self) -> TaskContext:
        """The context of the task (the same object every time)."""


_current: contextvars.ContextVar[TaskContext | ContextSource] = contextvars.ContextVar("conveyor_current_task")


def current_task() -> TaskContext:
    """Returns the context of the task running in this thread or asyncio task.

    Returns:
        The running task's :class:`TaskContext`.

    Raises:
        RuntimeError: Called outside a task run by a worker.
    """
    try:
        current = _current.get()
    except LookupError:
        raise RuntimeError("current_task() called outside a task run by a Conveyor worker") from None
    return current if isinstance(current, TaskContext) else current.task_context()


def bind(context: TaskContext | ContextSource) -> contextvars.Token[TaskContext | ContextSource]:
    """Makes `context` the current task of this context; returns the token to reset it.

    A `ContextSource` defers building the TaskContext until the task calls `current_task()`.
    """
    return _current.set(context)


def unbind(token: contextvars.Token[TaskContext | ContextSource]) -> None:
    """Undoes :func:`bind`."""
    _current.reset(token)

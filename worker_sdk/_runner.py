"""Runs one job's function: arguments in, a Result out; sync code on threads (or inline), async on the loop."""

from __future__ import annotations

import asyncio
import builtins
import contextvars
import dataclasses
import inspect
import logging
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from client_sdk import TaskDefinition
from worker_sdk import context
from worker_sdk._jobs import Cancelled, Failed, Job, ProgressReporter, Result, Succeeded
from worker_sdk._payload import (
    JSON_CONTENT_TYPE,
    ArgumentCheck,
    decode_arguments,
    encode_result,
    with_parent_results,
)
from worker_sdk._pool import TaskPool
from worker_sdk.errors import NonRetryableError, Retry

logger = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 4096
# Longest an inline run may hold the event loop before its task goes to threads for good.
INLINE_BUDGET_SECONDS = 0.1
MAX_TRACEBACK_CHARS = 32_768

Report = Callable[[Job, Result], None]
Free = Callable[[Job], None]
ProgressSink = Callable[[float, str], None]


def qualified_name(cls: type) -> str:
    """``ValueError`` for builtins, ``package.module.Class`` for everything else."""
    if cls.__module__ == "builtins" and getattr(builtins, cls.__qualname__, None) is cls:
        return str(cls.__qualname__)
    return f"{cls.__module__}.{cls.__qualname__}"


def _tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def failure_from_exception(exc: BaseException, dont_retry_on: Iterable[type[BaseException]] = ()) -> Failed:
    """Describes a raised exception as a Failed result.

    Retryable unless the exception is a NonRetryableError or an instance of one of
    `dont_retry_on`; a Retry carries its delay.
    """
    message = str(exc)
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next  # the traceback starts at the task's own code, not at the worker's call
    text = _tail("".join(traceback.format_exception(type(exc), exc, tb)), MAX_TRACEBACK_CHARS)
    if isinstance(exc, Retry):
        return Failed(qualified_name(type(exc)), message, text, retryable=True, retry_after=exc.after)
    retryable = not isinstance(exc, (NonRetryableError, *tuple(dont_retry_on)))
    return Failed(qualified_name(type(exc)), message, text, retryable=retryable)


def not_registered(name: str, known: Iterable[str]) -> Failed:
    """The Failed result of a task name this worker cannot run (another worker may)."""
    names = sorted(known)
    shown = ", ".join(names[:20]) + (", …" if len(names) > 20 else "")
    return Failed("NotRegistered", f"no task named {name!r} is registered on this worker (it has: {shown})",
                  retryable=True)


def _timeout_failure(timeout: float) -> Failed:
    return Failed("TimeoutError", f"task exceeded its execution timeout of {timeout:g}s", retryable=True)


_PLAIN_VALUES = frozenset({int, float, str, bool, type(None), list, dict})


def _success(value: Any) -> Result:
    if type(value) not in _PLAIN_VALUES and inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()
        return Failed("TypeError", "task function returned an awaitable: declare it with `async def`",
                      retryable=False)
    try:
        return Succeeded(encode_result(value), JSON_CONTENT_TYPE)
    except TypeError as exc:
        return Failed("TypeError", str(exc), retryable=False)


def _ended(job: Job, outcome: Result) -> Result:
    """An attempt that ends after a cancel request reports Cancelled, however it ended."""
    return Cancelled() if job.cancel_event.is_set() else outcome


@dataclass(frozen=True, slots=True)
class _Prepared:
    """What the runner works out once per task definition."""

    fn: Callable[..., Any]
    is_async: bool
    check: ArgumentCheck
    dont_retry_on: tuple[type[BaseException], ...]
    inline: bool  # a sync function run on the loop (`task(inline=True)`) until a run is too long


class Runner:
    """Calls task functions for the worker's engine; everything here runs on the loop but the calls.

    Sync functions run on a `TaskPool` of `threads` threads, or on the loop itself when declared
    inline; async ones as tasks on the loop. Nothing is awaited per job: completions come back as
    callbacks.

    Args:
        report: Called once per job with its outcome, as soon as it is known (on the loop).
        free: Called once per started job when its slot is free again (on the loop): when the
            function has returned, even if the attempt was reported earlier (a timeout).
        threads: Most threads for sync functions (the worker's concurrency).
    """

    def __init__(self, report: Report, free: Free, *, threads: int) -> None:
        self._report = report
        self._free = free
        self._loop = asyncio.get_running_loop()
        self._pool: TaskPool[Job, Result | None] = TaskPool(threads, self._loop, self._sync_done)
        self._prepared: dict[Callable[..., Any], _Prepared] = {}

    @property
    def busy_threads(self) -> int:
        """Threads still running a task function (some may belong to abandoned attempts)."""
        return self._pool.busy

    def shutdown(self) -> None:
        """Lets idle threads end; a thread still running a function ends when it returns."""
        self._pool.shutdown()

    def _prepare(self, definition: TaskDefinition[..., Any]) -> _Prepared:
        prepared = self._prepared.get(definition.fn)
        if prepared is None:
            fn = definition.fn
            is_async = inspect.iscoroutinefunction(fn)
            prepared = _Prepared(fn, is_async, ArgumentCheck(fn), tuple(definition.options.dont_retry_on),
                                 definition.options.inline and not is_async)
            self._prepared[fn] = prepared
        return prepared

    def start(self, job: Job, definition: TaskDefinition[..., Any] | None, known: Iterable[str],
              progress: ProgressReporter | None = None) -> None:
        """Starts `job`; its outcome goes to `report` and its slot to `free`, each once, later or now.

        Nothing raises out of here: every failure of the function becomes a Failed outcome.
        """
        if definition is None:
            if job.begin():
                self._report(job, not_registered(job.name, known))
            self._free(job)
            return
        prepared = self._prepare(definition)
        job.progress = progress
        if prepared.is_async:
            self._start_async(job, prepared)
            return
        if prepared.inline and job.timeout is None:
            self._run_inline(job, prepared)
            return
        # The copied context carries the caller's context variables into the thread.
        self._pool.submit(job, partial(contextvars.copy_context().run, self._call_sync, job, prepared))
        if job.timeout is not None:
            job.timer = self._loop.call_later(job.timeout, self._sync_timed_out, job)

    # -- sync functions: on the pool ---------------------------------------------------------------

    def _call_sync(self, job: Job, prepared: _Prepared) -> Result | None:
        """Runs on a pool thread (on the loop when inline); None when the job was withheld before it started."""
        if not job.begin():
            return None
        try:
            args, kwargs = decode_arguments(job.payload, job.content_type)
            if job.result_passing:
                args = with_parent_results(args, job.result_passing, job.parent_results)
            prepared.check(args, kwargs)
        except Exception as exc:  # noqa: BLE001 - a bad payload fails the attempt, never the worker
            return failure_from_exception(exc)
        context.bind(job)
        try:
            value = prepared.fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - a task's SystemExit must not end the worker
            return _ended(job, failure_from_exception(exc, prepared.dont_retry_on))
        return _ended(job, _success(value))

    def _run_inline(self, job: Job, prepared: _Prepared) -> None:
        """Runs a sync function on the loop, as a pool thread would (its own copy of the context)."""
        started = time.perf_counter()
        outcome = contextvars.copy_context().run(self._call_sync, job, prepared)
        took = time.perf_counter() - started
        if took > INLINE_BUDGET_SECONDS:
            self._prepared[prepared.fn] = dataclasses.replace(prepared, inline=False)
            logger.warning("inline task held the event loop for %.3fs; it runs on threads from now on name=%s",
                           took, job.name)
        self._sync_done(job, outcome)

    def _sync_timed_out(self, job: Job) -> None:
        job.timer = None
        if job.withheld:  # handed back before it started: nothing ran, nothing to report
            return
        # The thread cannot be stopped: report now, keep the slot until it returns.
        job.timed_out = True
        job.cancel_event.set()
        self._report(job, _timeout_failure(job.timeout or 0.0))
        logger.warning("task timed out; its thread keeps running task_id=%s name=%s timeout=%s",
                       job.task_id, job.name, job.timeout)

    def _sync_done(self, job: Job, outcome: Result | None) -> None:
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        try:
            if outcome is not None and not job.timed_out:
                self._report(job, outcome)
        finally:
            self._free(job)

    # -- async functions: on the loop --------------------------------------------------------------

    def _start_async(self, job: Job, prepared: _Prepared) -> None:
        try:
            args, kwargs = decode_arguments(job.payload, job.content_type)
            if job.result_passing:
                args = with_parent_results(args, job.result_passing, job.parent_results)
            prepared.check(args, kwargs)
        except Exception as exc:  # noqa: BLE001 - a bad payload fails the attempt, never the worker
            if job.begin():
                self._report(job, failure_from_exception(exc))
            self._free(job)
            return
        if not job.begin():
            self._free(job)
            return
        aio_task: asyncio.Task[Any] = self._loop.create_task(_call_async(job, prepared.fn, args, kwargs),
                                                             name=f"task {job.task_id}")
        job.aio_task = aio_task
        aio_task.add_done_callback(partial(self._async_done, job, prepared.dont_retry_on))

    def _async_done(self, job: Job, dont_retry_on: tuple[type[BaseException], ...],
                    aio_task: asyncio.Task[Any]) -> None:
        try:
            if aio_task.cancelled():
                self._report(job, Cancelled())
                return
            exc = aio_task.exception()
            if isinstance(exc, _TimedOut):
                self._report(job, _timeout_failure(job.timeout or 0.0))
            elif exc is not None:
                self._report(job, _ended(job, failure_from_exception(exc, dont_retry_on)))
            else:
                self._report(job, _ended(job, _success(aio_task.result())))
        finally:
            self._free(job)


async def _call_async(job: Job, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    context.bind(job)
    if job.timeout is None:
        return await fn(*args, **kwargs)
    deadline = asyncio.timeout(job.timeout)
    try:
        async with deadline:
            return await fn(*args, **kwargs)
    except TimeoutError:
        if not deadline.expired():  # the function's own TimeoutError
            raise
        job.cancel_event.set()
        raise _TimedOut() from None


class _TimedOut(Exception):
    """An async attempt ran past its execution timeout."""

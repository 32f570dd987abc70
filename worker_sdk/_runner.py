"""Runs one job's function: arguments in, a Result out; sync code on threads, async on the loop."""

from __future__ import annotations

import asyncio
import builtins
import contextvars
import inspect
import logging
import threading
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from typing import Any

from client_sdk import TaskDefinition
from worker_sdk import context
from worker_sdk._jobs import Cancelled, Failed, Job, Result, Succeeded
from worker_sdk._payload import JSON_CONTENT_TYPE, check_arguments, decode_arguments, encode_result
from worker_sdk.errors import NonRetryableError, Retry

logger = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 4096
MAX_TRACEBACK_CHARS = 32_768

Report = Callable[[Job, Result], None]
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


def _success(value: Any) -> Result:
    if inspect.isawaitable(value):
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


class Runner:
    """Calls task functions for the worker's engine.

    Args:
        executor: Where sync functions run (one thread per slot).
        report: Called once per job with its outcome, as soon as it is known (on the loop).
    """

    def __init__(self, executor: Executor, report: Report) -> None:
        self._executor = executor
        self._report = report
        self._busy_lock = threading.Lock()
        self._busy = 0

    @property
    def busy_threads(self) -> int:
        """Threads still running a task function (some may belong to abandoned attempts)."""
        with self._busy_lock:
            return self._busy

    def context_for(self, job: Job, progress: ProgressSink | None) -> context.TaskContext:
        return context.TaskContext(id=job.task_id, name=job.name, queue=job.queue, attempt=job.attempt,
                                   max_attempts=job.max_attempts, headers=job.headers,
                                   _cancel_event=job.cancel_event, _progress_sink=progress)

    async def run(self, job: Job, definition: TaskDefinition[..., Any] | None, known: Iterable[str],
                  progress: ProgressSink | None = None) -> None:
        """Runs `job` and reports its outcome; returns once its slot is free.

        Nothing raises out of here: every failure of the function becomes a Failed outcome.
        """
        if definition is None:
            if job.begin():
                self._report(job, not_registered(job.name, known))
            return
        try:
            args, kwargs = decode_arguments(job.payload, job.content_type)
            check_arguments(definition.fn, args, kwargs)
        except Exception as exc:  # noqa: BLE001 - a bad payload fails the attempt, never the worker
            if job.begin():
                self._report(job, failure_from_exception(exc))
            return
        ctx = self.context_for(job, progress)
        dont_retry_on = tuple(definition.options.dont_retry_on)
        if inspect.iscoroutinefunction(definition.fn):
            await self._run_async(job, definition.fn, args, kwargs, ctx, dont_retry_on)
        else:
            await self._run_sync(job, definition.fn, args, kwargs, ctx, dont_retry_on)

    async def _run_async(self, job: Job, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                         ctx: context.TaskContext, dont_retry_on: tuple[type[BaseException], ...]) -> None:
        if not job.begin():
            return

        async def call() -> Any:
            context.bind(ctx)
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

        aio_task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(call(), name=f"task {job.task_id}")
        job.aio_task = aio_task
        # wait() never cancels what it waits for, so shutting the engine down cannot fake a cancel.
        await asyncio.wait({aio_task})
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

    async def _run_sync(self, job: Job, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                        ctx: context.TaskContext, dont_retry_on: tuple[type[BaseException], ...]) -> None:
        def call() -> Result | None:
            if not job.begin():
                return None
            context.bind(ctx)
            with self._busy_lock:
                self._busy += 1
            try:
                value = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - a task's SystemExit must not end the worker
                return _ended(job, failure_from_exception(exc, dont_retry_on))
            finally:
                with self._busy_lock:
                    self._busy -= 1
            return _ended(job, _success(value))

        loop = asyncio.get_running_loop()
        # The copied context carries the caller's context variables into the thread.
        future = loop.run_in_executor(self._executor, contextvars.copy_context().run, call)
        done, _ = await asyncio.wait({future}, timeout=job.timeout)
        if not done:
            # The thread cannot be stopped: report now, keep the slot until it returns.
            job.cancel_event.set()
            self._report(job, _timeout_failure(job.timeout or 0.0))
            logger.warning("task timed out; its thread keeps running task_id=%s name=%s timeout=%s",
                           job.task_id, job.name, job.timeout)
            await asyncio.wait({future})
            return
        outcome = future.result()
        if outcome is not None:
            self._report(job, outcome)


class _TimedOut(Exception):
    """An async attempt ran past its execution timeout."""

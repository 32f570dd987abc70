"""Running one job: sync functions on threads, async ones on the loop, outcomes, timeouts, cancels, context."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from worker_sdk import NonRetryableError, TaskDefinition, current_task, task
from worker_sdk._jobs import Cancelled, Failed, Job, Result, Succeeded
from worker_sdk._payload import encode_arguments
from worker_sdk._runner import Runner

user_var: contextvars.ContextVar[str] = contextvars.ContextVar("user_var", default="unset")


def make_job(name: str, *args: Any, timeout: float | None = None, content_type: str = "application/json",
             payload: bytes | None = None, **kwargs: Any) -> Job:
    return Job(task_id=f"01ARZ3NDEKTSV4RRFFQ69G5FAV@{name}", lease_token=7, name=name, queue="q",
               payload=encode_arguments(args, kwargs) if payload is None else payload, content_type=content_type,
               headers={"trace": "abc"}, attempt=2, max_attempts=5, lease_duration=30.0, timeout=timeout)


def run(definition: TaskDefinition[..., Any] | None, job: Job,
        during: Callable[[Job], None] | None = None, progress: list[tuple[float, str]] | None = None,
        ) -> list[tuple[float, Result]]:
    """Runs `job` to completion; returns (seconds since start, result) of every report."""
    reports: list[tuple[float, Result]] = []

    async def main() -> None:
        started = time.monotonic()
        freed = asyncio.get_running_loop().create_future()
        runner = Runner(lambda _job, result: reports.append((time.monotonic() - started, result)),
                        lambda _job: freed.set_result(None), threads=2)
        try:
            sink = (lambda _job, f, m: progress.append((f, m))) if progress is not None else None
            runner.start(job, definition, ["known.task"], sink)
            if during is not None:
                await asyncio.sleep(0.1)
                during(job)
            await asyncio.wait_for(freed, 10)
        finally:
            runner.shutdown()

    asyncio.run(main())
    return reports


@task
def add(x: int, y: int) -> int:
    return x + y


@task
async def async_add(x: int, y: int) -> int:
    await asyncio.sleep(0)
    return x + y


@task
def explode() -> None:
    raise ValueError("bad value")


@task(dont_retry_on=(ValueError,))
def explode_for_good() -> None:
    raise ValueError("bad value")


def test_sync_function_result_is_reported_as_json() -> None:
    assert [r for _, r in run(add, make_job("add", 1, 2))] == [Succeeded(b"3", "application/json")]


def test_async_function_result_is_reported_as_json() -> None:
    assert [r for _, r in run(async_add, make_job("async_add", 2, y=5))] == [Succeeded(b"7", "application/json")]


def test_sync_function_runs_on_a_worker_thread_and_async_on_the_loop() -> None:
    seen: dict[str, str] = {}

    @task
    def where() -> None:
        seen["sync"] = threading.current_thread().name

    @task
    async def where_async() -> None:
        seen["async"] = threading.current_thread().name

    run(where, make_job("where"))
    run(where_async, make_job("where_async"))
    assert seen["sync"] != threading.main_thread().name
    assert seen["async"] == threading.main_thread().name


def run_one_after_another(definition: TaskDefinition[..., Any], jobs: list[Job]) -> list[Result]:
    """Runs `jobs` one at a time on one runner; the result of each."""
    reports: list[Result] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        freed: asyncio.Future[None] = loop.create_future()

        def free(_job: Job) -> None:
            if not freed.done():
                freed.set_result(None)

        runner = Runner(lambda _job, result: reports.append(result), free, threads=2)
        try:
            for job in jobs:
                freed = loop.create_future()
                runner.start(job, definition, ["known.task"])
                await asyncio.wait_for(freed, 10)
        finally:
            runner.shutdown()

    asyncio.run(main())
    return reports


@task(inline=True)
def inline_where(sleep: float = 0.0) -> str:
    time.sleep(sleep)
    return f"{threading.current_thread().name} {current_task().attempt}"


@task(inline=True)
def inline_explode() -> None:
    raise ValueError("bad value")


def test_an_inline_function_runs_on_the_loop_and_reports_as_a_threaded_one_would() -> None:
    assert run_one_after_another(inline_where, [make_job("inline_where")]) == [
        Succeeded(f'"{threading.main_thread().name} 2"'.encode(), "application/json")]
    [failure] = run_one_after_another(inline_explode, [make_job("inline_explode")])
    assert isinstance(failure, Failed) and failure.type == "ValueError" and failure.retryable


def test_an_inline_run_longer_than_its_budget_sends_the_task_to_threads(caplog: pytest.LogCaptureFixture) -> None:
    jobs = [make_job("inline_where", 0.15), make_job("inline_where"), make_job("inline_where")]

    first, second, third = run_one_after_another(inline_where, jobs)

    main = threading.main_thread().name
    assert first == Succeeded(f'"{main} 2"'.encode(), "application/json")
    assert isinstance(second, Succeeded) and not second.payload.startswith(f'"{main} '.encode())
    assert isinstance(third, Succeeded) and not third.payload.startswith(f'"{main} '.encode())
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "held the event loop" in warning and "runs on threads from now on name=inline_where" in warning


def test_an_inline_attempt_with_an_execution_timeout_runs_on_a_thread() -> None:
    [result] = run_one_after_another(inline_where, [make_job("inline_where", timeout=5)])

    assert isinstance(result, Succeeded)
    assert not result.payload.startswith(f'"{threading.main_thread().name} '.encode())


def test_an_exception_is_a_retryable_failure() -> None:
    [(_, result)] = run(explode, make_job("explode"))
    assert isinstance(result, Failed)
    assert (result.type, result.message, result.retryable) == ("ValueError", "bad value", True)
    assert "in explode" in result.traceback
    assert "worker_sdk" not in result.traceback  # it starts at the task's own code


def test_dont_retry_on_from_the_task_options_is_honoured() -> None:
    [(_, result)] = run(explode_for_good, make_job("explode_for_good"))
    assert isinstance(result, Failed) and result.retryable is False


def test_non_retryable_error_is_not_retried() -> None:
    @task
    def refuse() -> None:
        raise NonRetryableError("never")

    [(_, result)] = run(refuse, make_job("refuse"))
    assert isinstance(result, Failed) and result.retryable is False


def test_unknown_task_is_not_registered_and_retryable() -> None:
    [(_, result)] = run(None, make_job("nope"))
    assert isinstance(result, Failed)
    assert (result.type, result.retryable) == ("NotRegistered", True)


def test_bad_payload_fails_for_good_without_calling_the_function() -> None:
    called = []

    @task
    def f(x: int) -> None:
        called.append(x)

    [(_, result)] = run(f, make_job("f", payload=b"{oops"))
    assert isinstance(result, Failed) and result.retryable is False
    assert result.type == "worker_sdk.errors.PayloadError"
    [(_, result)] = run(f, make_job("f", 1, 2))
    assert isinstance(result, Failed) and "signature" in result.message
    assert called == []


def test_raw_payload_is_the_single_argument() -> None:
    @task
    def size(data: bytes) -> int:
        return len(data)

    [(_, result)] = run(size, make_job("size", payload=b"\x00\x01\x02", content_type="application/octet-stream"))
    assert result == Succeeded(b"3", "application/json")


def test_unserialisable_result_fails_for_good_with_a_type_error() -> None:
    @task
    def gives_set() -> set[int]:
        return {1}

    [(_, result)] = run(gives_set, make_job("gives_set"))
    assert isinstance(result, Failed)
    assert (result.type, result.retryable) == ("TypeError", False)
    assert "not JSON-serialisable" in result.message


def test_a_sync_function_returning_a_coroutine_fails_with_a_hint() -> None:
    async def inner() -> int:
        return 1

    @task
    def wrapped() -> Any:
        return inner()

    [(_, result)] = run(wrapped, make_job("wrapped"))
    assert isinstance(result, Failed) and "async def" in result.message


def test_system_exit_in_a_task_fails_the_attempt_not_the_worker() -> None:
    @task
    def leave() -> None:
        raise SystemExit(3)

    [(_, result)] = run(leave, make_job("leave"))
    assert isinstance(result, Failed) and result.type == "SystemExit"


def test_sync_timeout_is_reported_at_the_deadline_and_the_late_result_dropped() -> None:
    @task
    def slow() -> str:
        time.sleep(0.5)
        return "late"

    reports = run(slow, make_job("slow", timeout=0.1))
    assert len(reports) == 1
    at, result = reports[0]
    assert isinstance(result, Failed) and result.type == "TimeoutError" and result.retryable
    assert "0.1s" in result.message
    assert 0.08 < at < 0.4


def test_async_timeout_cancels_the_coroutine() -> None:
    cleaned = []

    @task
    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append(True)

    [(at, result)] = run(slow, make_job("slow", timeout=0.1))
    assert isinstance(result, Failed) and result.type == "TimeoutError"
    assert cleaned == [True] and at < 1


def test_async_task_cancelled_by_request_reports_cancelled() -> None:
    @task
    async def forever() -> None:
        await asyncio.sleep(10)

    [(at, result)] = run(forever, make_job("forever"), during=Job.request_cancel)
    assert result == Cancelled() and at < 1


def test_sync_task_sees_the_cancelled_flag_and_its_return_reports_cancelled() -> None:
    @task
    def cooperative() -> str:
        while not current_task().cancelled:
            time.sleep(0.01)
        return "stopped early"

    [(at, result)] = run(cooperative, make_job("cooperative"), during=Job.request_cancel)
    assert result == Cancelled() and at < 1


def test_a_withheld_job_never_starts() -> None:
    called = []

    @task
    def f() -> None:
        called.append(1)

    job = make_job("f")
    assert job.withhold()
    assert run(f, job) == []
    assert called == [] and not job.begin()


@pytest.mark.parametrize("asynchronous", [False, True])
def test_current_task_describes_the_running_attempt(asynchronous: bool) -> None:
    def describe() -> dict[str, Any]:
        ctx = current_task()
        return {"id": ctx.id, "name": ctx.name, "queue": ctx.queue, "attempt": ctx.attempt,
                "max_attempts": ctx.max_attempts, "headers": dict(ctx.headers), "cancelled": ctx.cancelled}

    async def describe_async() -> dict[str, Any]:
        return describe()

    definition: TaskDefinition[..., Any] = task(describe_async if asynchronous else describe)
    [(_, result)] = run(definition, make_job("describe"))
    assert isinstance(result, Succeeded)
    assert result.payload == (b'{"id":"01ARZ3NDEKTSV4RRFFQ69G5FAV@describe","name":"describe","queue":"q",'
                              b'"attempt":2,"max_attempts":5,"headers":{"trace":"abc"},"cancelled":false}')


def test_current_task_outside_a_task_raises() -> None:
    with pytest.raises(RuntimeError, match="outside a task"):
        current_task()


def test_the_callers_context_variables_reach_the_thread() -> None:
    @task
    def read_var() -> str:
        return user_var.get()

    token = user_var.set("from caller")
    try:
        [(_, result)] = run(read_var, make_job("read_var"))
    finally:
        user_var.reset(token)
    assert result == Succeeded(b'"from caller"', "application/json")


def test_progress_is_clamped_and_truncated() -> None:
    @task
    def progressing() -> None:
        ctx = current_task()
        ctx.report_progress(0.5, "half")
        ctx.report_progress(7, "x" * 2000)
        ctx.report_progress(-1)

    progress: list[tuple[float, str]] = []
    run(progressing, make_job("progressing"), progress=progress)
    assert progress == [(0.5, "half"), (1.0, "x" * 1024), (0.0, "")]


def test_progress_rejects_nan() -> None:
    @task
    def bad_progress() -> None:
        current_task().report_progress(float("nan"))

    [(_, result)] = run(bad_progress, make_job("bad_progress"), progress=[])
    assert isinstance(result, Failed) and result.type == "ValueError"

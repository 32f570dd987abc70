"""Failed attempts: retried per policy until one succeeds, or dead-lettered with the error the worker saw."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from client_sdk import Client, TaskFailedError, TaskState
from tests.integration.conftest import StartWorker
from tests.integration.tasks import retry_after_then_succeed
from worker_sdk.examples import always_fails, fail_times, flaky, lookup, reject


def test_a_task_that_fails_twice_succeeds_on_its_third_attempt(
    fast_client: Client, start_worker: StartWorker, queue_name: str, trace_file: Path
) -> None:
    start_worker(queue_name)
    handle = fast_client.enqueue(
        fail_times.with_options(queue=queue_name, max_attempts=3, retry_backoff=0.2), str(trace_file), 2)

    assert handle.result(timeout=20) == 3
    info = handle.get()
    assert info.state is TaskState.SUCCEEDED
    assert info.attempt == 3
    assert info.retry_policy.max_attempts == 3
    # The last failure is kept for the record even though the task succeeded in the end.
    assert info.error is None or info.error.message == "planned failure 2 of 2"


def test_retries_wait_out_the_exponential_backoff(
    fast_client: Client, start_worker: StartWorker, queue_name: str, tmp_path: Path
) -> None:
    start_worker(queue_name)
    started = time.monotonic()
    handle = fast_client.enqueue(flaky.with_options(queue=queue_name, max_attempts=4, retry_backoff=0.3),
                                 "backoff", 2, str(tmp_path))
    assert handle.result(timeout=20) == "succeeded on call 3"
    # Two retries: 0.3 s, then 0.6 s (multiplier 2, no jitter).
    assert time.monotonic() - started >= 0.9
    assert handle.get().attempt == 3


def test_retry_after_is_honoured_exactly_whatever_the_backoff_policy(
    fast_client: Client, start_worker: StartWorker, queue_name: str, trace_file: Path
) -> None:
    start_worker(queue_name)
    # The policy's backoff would wait a minute; the task asks for 0.8 s.
    handle = fast_client.enqueue(
        retry_after_then_succeed.with_options(queue=queue_name, retry_backoff=60, max_attempts=3),
        str(trace_file), 0.8)

    assert handle.result(timeout=15) == 2
    first, second = (float(line) for line in trace_file.read_text().splitlines())
    assert 0.8 <= second - first < 0.8 + 2.0  # the policy alone would have waited 60 s
    assert handle.get().attempt == 2


def test_a_task_that_always_fails_ends_failed_in_the_dead_letter_set_with_its_error(
    fast_client: Client, start_worker: StartWorker, queue_name: str
) -> None:
    start_worker(queue_name)
    handle = fast_client.enqueue(always_fails.with_options(queue=queue_name, max_attempts=2, retry_backoff=0.1))

    with pytest.raises(TaskFailedError) as caught:
        handle.result(timeout=20)
    error = caught.value.error
    assert caught.value.task_id == handle.id
    assert error.type == "ValueError"
    assert error.message == "this task always fails"
    assert "Traceback" in error.traceback
    assert "always_fails" in error.traceback
    assert 'raise ValueError("this task always fails")' in error.traceback

    info = handle.get()
    assert info.state is TaskState.FAILED
    assert info.attempt == 2
    assert info.reason == "attempts_exhausted"
    dead = list(fast_client.list(queue_name, TaskState.FAILED))
    assert [t.id for t in dead] == [handle.id]
    assert list(fast_client.list(queue_name, TaskState.QUEUED)) == []
    assert list(fast_client.list(queue_name, TaskState.SCHEDULED)) == []


@pytest.mark.parametrize(("definition", "args", "error_type"), [
    (reject, ("no such customer",), "worker_sdk.examples.InvalidOrder"),
    (lookup, ("missing",), "KeyError"),
], ids=["non-retryable-error", "dont-retry-on"])
def test_a_non_retryable_error_dead_letters_after_one_attempt(
    fast_client: Client, start_worker: StartWorker, queue_name: str,
    definition: object, args: tuple[str], error_type: str,
) -> None:
    start_worker(queue_name)
    handle = fast_client.enqueue(definition.with_options(queue=queue_name, max_attempts=5,  # type: ignore[attr-defined]
                                                         retry_backoff=0.1), *args)

    with pytest.raises(TaskFailedError) as caught:
        handle.result(timeout=15)
    assert caught.value.error.type == error_type
    assert caught.value.error.retryable is False
    assert args[0] in caught.value.error.message

    info = handle.get()
    assert info.state is TaskState.FAILED
    assert info.attempt == 1
    assert info.reason == "non_retryable"
    assert handle.id in [t.id for t in fast_client.list(queue_name, TaskState.FAILED)]

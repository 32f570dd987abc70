"""Cancelling tasks: waiting ones at once and for good, running ones through their worker, finished ones refused."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from client_sdk import (
    Client,
    FailedPreconditionError,
    TaskCancelledError,
    TaskState,
)
from tests.helpers import eventually
from tests.integration.conftest import MakeBroker, StartWorker
from tests.integration.tasks import record, wait_for_cancel
from worker_sdk.examples import add


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_cancelling_a_queued_task_cancels_it_at_once_and_it_never_runs(
    fast_client: Client, start_worker: StartWorker, queue_name: str, trace_file: Path
) -> None:
    victim = fast_client.enqueue(record.with_options(queue=queue_name), str(trace_file), "cancelled one")
    assert victim.get().state is TaskState.QUEUED

    assert victim.cancel("no longer needed") is TaskState.CANCELLED
    info = victim.get()
    assert info.state is TaskState.CANCELLED
    assert info.reason == "no longer needed"
    assert info.finished_at is not None
    assert list(fast_client.list(queue_name, TaskState.QUEUED)) == []
    assert [t.id for t in fast_client.list(queue_name, TaskState.CANCELLED)] == [victim.id]

    # A worker arrives: the task submitted after the cancelled one runs, the cancelled one does not.
    start_worker(queue_name, concurrency=1)
    after = fast_client.enqueue(record.with_options(queue=queue_name), str(trace_file), "later one")
    assert after.result(timeout=15) == "later one"
    assert _lines(trace_file) == ["later one"]
    with pytest.raises(TaskCancelledError):
        victim.result(timeout=5)
    assert victim.get().started_at is None


def test_cancelling_a_scheduled_task_cancels_it_before_it_is_due(
    fast_client: Client, start_worker: StartWorker, queue_name: str, trace_file: Path
) -> None:
    start_worker(queue_name)
    victim = fast_client.enqueue(record.with_options(queue=queue_name, delay=0.5), str(trace_file), "delayed")
    assert victim.get().state is TaskState.SCHEDULED
    assert victim.cancel() is TaskState.CANCELLED
    assert list(fast_client.list(queue_name, TaskState.SCHEDULED)) == []

    # Well past its due time (a later delayed task has run), it still has not.
    marker = fast_client.enqueue(record.with_options(queue=queue_name, delay=1.0), str(trace_file), "marker")
    assert marker.result(timeout=15) == "marker"
    assert _lines(trace_file) == ["marker"]
    assert victim.get().state is TaskState.CANCELLED


def test_cancelling_a_running_task_tells_its_worker_and_the_task_ends_cancelled(
    fast_client: Client, start_worker: StartWorker, queue_name: str, trace_file: Path
) -> None:
    start_worker(queue_name)
    handle = fast_client.enqueue(wait_for_cancel.with_options(queue=queue_name), str(trace_file), 20.0)
    eventually(lambda: _lines(trace_file) == ["started"], timeout=10)
    assert handle.get().state is TaskState.RUNNING

    asked = time.monotonic()
    state = handle.cancel("stop it")
    assert state in (TaskState.RUNNING, TaskState.CANCELLED)
    if state is TaskState.RUNNING:
        assert handle.get().cancel_requested or handle.get().state is TaskState.CANCELLED

    info = handle.wait(timeout=10)
    assert info.state is TaskState.CANCELLED
    assert time.monotonic() - asked < 5  # told over the stream, not after a lease expiry
    assert _lines(trace_file) == ["started", "saw cancel"]
    assert info.cancel_requested is False
    with pytest.raises(TaskCancelledError):
        handle.result(timeout=5)


def test_cancelling_a_finished_task_is_refused_with_failed_precondition(
    fast_client: Client, start_worker: StartWorker, queue_name: str
) -> None:
    start_worker(queue_name)
    handle = fast_client.enqueue(add.with_options(queue=queue_name), 2, 3)
    assert handle.result(timeout=15) == 5

    with pytest.raises(FailedPreconditionError):
        handle.cancel()
    assert handle.get().state is TaskState.SUCCEEDED
    assert handle.result(timeout=5) == 5


def test_cancelling_a_cancelled_task_again_is_refused_with_failed_precondition(
    fast_client: Client, queue_name: str
) -> None:
    handle = fast_client.enqueue(add.with_options(queue=queue_name), 2, 3)
    assert handle.cancel() is TaskState.CANCELLED
    with pytest.raises(FailedPreconditionError):
        handle.cancel()


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "sigkill"])
def test_a_cancel_is_durable_across_a_broker_restart(
    make_broker: MakeBroker, start_worker: StartWorker, queue_name: str, trace_file: Path, hard: bool
) -> None:
    broker = make_broker()
    with Client(broker.address) as client:
        queued = client.enqueue(record.with_options(queue=queue_name), str(trace_file), "queued")
        scheduled = client.enqueue(record.with_options(queue=queue_name, delay=0.5), str(trace_file), "scheduled")
        assert queued.cancel() is TaskState.CANCELLED
        assert scheduled.cancel() is TaskState.CANCELLED

    broker.restart(hard=hard)

    with Client(broker.address) as client:
        assert client.get(queued.id).state is TaskState.CANCELLED
        assert client.get(scheduled.id).state is TaskState.CANCELLED
        start_worker(queue_name, broker=broker)
        marker = client.enqueue(record.with_options(queue=queue_name, delay=0.3), str(trace_file), "marker")
        assert client.result(marker.id, timeout=15) == "marker"
        assert _lines(trace_file) == ["marker"]
        assert client.get(queued.id).state is TaskState.CANCELLED
        assert client.get(scheduled.id).state is TaskState.CANCELLED

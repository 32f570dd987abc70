"""Submit a task and read its result: sync client, asyncio client, and a bare gRPC stub by name."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from conveyor.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc

from client_sdk import AsyncClient, Client, TaskState
from tests.helpers import BrokerProcess, run_async
from tests.integration.conftest import StartWorker
from tests.integration.tasks import inline_thread, record
from worker_sdk.examples import add, async_add


def test_sync_client_enqueues_a_task_definition_and_gets_its_result(
    fast_client: Client, start_worker: StartWorker, queue_name: str
) -> None:
    start_worker(queue_name)
    handle = fast_client.enqueue(add.with_options(queue=queue_name), 1, 2)

    assert handle.result(timeout=15) == 3
    info = handle.get()
    assert info.state is TaskState.SUCCEEDED
    assert info.name == "worker_sdk.examples.add"
    assert info.queue == queue_name
    assert info.attempt == 1
    assert info.created_at is not None and info.started_at is not None and info.finished_at is not None
    assert info.created_at <= info.started_at <= info.finished_at


def test_an_inline_task_runs_on_the_worker_process_s_main_thread(
    fast_client: Client, start_worker: StartWorker, queue_name: str
) -> None:
    start_worker(queue_name)

    assert fast_client.call(inline_thread.s().with_options(queue=queue_name), timeout=15) == "MainThread"


def test_enqueue_of_the_bare_definition_and_of_a_bare_name_use_the_default_queue(
    fast_client: Client, start_worker: StartWorker
) -> None:
    """`client.enqueue(add, 1, 2)` as a user writes it (the module's broker has its own namespace)."""
    start_worker("default")
    by_definition = fast_client.enqueue(add, 1, 2)
    by_name = fast_client.enqueue("worker_sdk.examples.add", 3, 4)
    assert by_definition.queue == by_name.queue == "default"
    assert by_definition.result(timeout=15) == 3
    assert by_name.result(timeout=15) == 7


def test_arguments_that_do_not_fit_the_task_are_refused_before_anything_is_sent(
    fast_client: Client, queue_name: str
) -> None:
    definition = add.with_options(queue=queue_name)
    with pytest.raises(TypeError):
        fast_client.enqueue(definition, 1)  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        fast_client.enqueue(definition, 1, 2, z=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        fast_client.enqueue(definition, 1, object())  # type: ignore[call-overload]  # not JSON
    assert list(fast_client.list(queue_name, TaskState.QUEUED)) == []


def test_sync_client_enqueues_by_signature_with_keyword_arguments(
    fast_client: Client, start_worker: StartWorker, queue_name: str, trace_file: Path
) -> None:
    start_worker(queue_name)
    signature = record.with_options(queue=queue_name).s(path=str(trace_file), label="by keyword")
    assert fast_client.enqueue(signature).result(timeout=15) == "by keyword"


def test_async_client_enqueues_and_awaits_the_result(
    fast_broker: BrokerProcess, start_worker: StartWorker, queue_name: str
) -> None:
    start_worker(queue_name)

    async def main() -> tuple[int, int, TaskState]:
        async with AsyncClient(fast_broker.address) as client:
            first = await client.enqueue(add.with_options(queue=queue_name), 20, 22)
            second = await client.enqueue(async_add.with_options(queue=queue_name), 1, 1, 0.1)
            info = await client.wait(second.id, timeout=15)
            return await first.result(timeout=15), await second.result(timeout=15), info.state

    assert run_async(main()) == (42, 2, TaskState.SUCCEEDED)


def test_a_bare_grpc_stub_submits_by_name_and_reads_the_json_result(
    fast_broker: BrokerProcess, start_worker: StartWorker, queue_name: str
) -> None:
    """The path any other language takes: only the .proto contract, a task name and JSON bytes."""
    start_worker(queue_name)
    with grpc.insecure_channel(fast_broker.address) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        spec = task_service_pb2.TaskSpec(
            queue=queue_name, name="worker_sdk.examples.add",
            payload=json.dumps({"args": [40], "kwargs": {"y": 2}}).encode(),
            content_type="application/json")
        response = stub.EnqueueTask(task_service_pb2.EnqueueTaskRequest(task=spec), timeout=5)
        assert response.task_id.endswith("@" + queue_name)
        assert response.state == task_pb2.TASK_STATE_QUEUED

        updates = list(stub.WaitTask(task_service_pb2.WaitTaskRequest(
            task_id=response.task_id, timeout={"seconds": 15}), timeout=20))
        final = updates[-1].task
        assert final.state == task_pb2.TASK_STATE_SUCCEEDED
        assert final.result_content_type == "application/json"
        assert json.loads(final.result) == 42

        again = stub.GetTask(task_service_pb2.GetTaskRequest(task_id=response.task_id), timeout=5).task
        assert again.state == task_pb2.TASK_STATE_SUCCEEDED
        assert json.loads(again.result) == 42
        assert json.loads(again.payload) == {"args": [40], "kwargs": {"y": 2}}

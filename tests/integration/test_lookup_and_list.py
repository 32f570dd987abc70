"""Reading tasks: unknown ids answer NOT_FOUND; ListTasks pages through a queue once, in order."""

from __future__ import annotations

import grpc
import pytest
from conveyor.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc

from client_sdk import Client, NotFoundError, TaskState
from tests.helpers import BrokerProcess
from worker_sdk.examples import add

UNKNOWN_ULID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


@pytest.mark.parametrize("rpc", ["GetTask", "WaitTask", "CancelTask"])
def test_an_unknown_well_formed_id_answers_not_found(
    fast_broker: BrokerProcess, queue_name: str, rpc: str
) -> None:
    task_id = f"{UNKNOWN_ULID}@{queue_name}"
    with grpc.insecure_channel(fast_broker.address) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            if rpc == "GetTask":
                stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task_id), timeout=5)
            elif rpc == "WaitTask":
                list(stub.WaitTask(task_service_pb2.WaitTaskRequest(task_id=task_id), timeout=5))
            else:
                stub.CancelTask(task_service_pb2.CancelTaskRequest(task_id=task_id), timeout=5)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert task_id in (caught.value.details() or "")


def test_the_client_sdk_raises_not_found_error_for_an_unknown_id(
    fast_client: Client, queue_name: str
) -> None:
    task_id = f"{UNKNOWN_ULID}@{queue_name}"
    for call in (lambda: fast_client.get(task_id), lambda: fast_client.wait(task_id, timeout=3),
                 lambda: fast_client.result(task_id, timeout=3), lambda: fast_client.cancel(task_id)):
        with pytest.raises(NotFoundError) as caught:
            call()
        assert caught.value.code == "NOT_FOUND"


def test_an_id_of_one_queue_is_not_found_in_another(fast_client: Client, queue_name: str) -> None:
    handle = fast_client.enqueue(add.with_options(queue=queue_name), 1, 1)
    ulid = handle.id.partition("@")[0]
    assert fast_client.get(handle.id).state is TaskState.QUEUED
    with pytest.raises(NotFoundError):
        fast_client.get(f"{ulid}@{queue_name}-other")


def test_listing_250_tasks_by_pages_of_100_returns_each_once_in_order(
    fast_broker: BrokerProcess, fast_client: Client, queue_name: str
) -> None:
    handles = fast_client.enqueue_many(add.with_options(queue=queue_name).s(i, i) for i in range(250))
    ids = [h.id for h in handles]

    with grpc.insecure_channel(fast_broker.address) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        pages: list[list[str]] = []
        token = ""
        while True:
            page = stub.ListTasks(task_service_pb2.ListTasksRequest(
                queue=queue_name, state=task_pb2.TASK_STATE_QUEUED, page_size=100, page_token=token), timeout=5)
            pages.append([t.id for t in page.tasks])
            assert all(t.payload == b"" and t.result == b"" for t in page.tasks)
            assert all(t.state == task_pb2.TASK_STATE_QUEUED for t in page.tasks)
            token = page.next_page_token
            if not token:
                break
            assert len(pages) < 10, "paging does not end"

    assert [len(p) for p in pages] == [100, 100, 50]
    assert [task_id for p in pages for task_id in p] == ids

    # The SDK's iterator does the same paging.
    assert [t.id for t in fast_client.list(queue_name, TaskState.QUEUED, page_size=100)] == ids
    # Other states of the queue are empty, and so is the same state of another queue.
    assert list(fast_client.list(queue_name, TaskState.RUNNING)) == []
    assert list(fast_client.list(queue_name + "-other", TaskState.QUEUED)) == []


def test_a_page_token_stays_valid_while_the_queue_changes(
    fast_client: Client, queue_name: str
) -> None:
    handles = fast_client.enqueue_many(add.with_options(queue=queue_name).s(i, i) for i in range(30))
    listing = fast_client.list(queue_name, TaskState.QUEUED, page_size=10)
    first = [next(listing).id for _ in range(10)]
    # Tasks of the first page are cancelled and new ones are added while the listing goes on.
    for handle in handles[:5]:
        handle.cancel()
    later = fast_client.enqueue_many(add.with_options(queue=queue_name).s(i, i) for i in range(5))
    rest = [t.id for t in listing]
    assert first == [h.id for h in handles[:10]]
    assert rest == [h.id for h in handles[10:]] + [h.id for h in later]

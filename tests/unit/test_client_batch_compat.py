"""enqueue_many against a broker older than template batches, served over real gRPC: such a
broker sees no task in a template request and refuses it naming `tasks`; the client sends the
batch again as TaskSpecs, and from then on sends TaskSpecs at once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from conveyor.v1 import task_service_pb2, task_service_pb2_grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from client_sdk import AsyncClient, Client, signature


class OlderBroker(task_service_pb2_grpc.TaskServiceServicer):
    """BatchEnqueueTasks as brokers before templates answer it (no other method is served)."""

    def __init__(self) -> None:
        self.requests: list[task_service_pb2.BatchEnqueueTasksRequest] = []

    def BatchEnqueueTasks(self, request: task_service_pb2.BatchEnqueueTasksRequest,
                          context: grpc.ServicerContext) -> task_service_pb2.BatchEnqueueTasksResponse:
        self.requests.append(request)
        if not request.tasks:
            detail = any_pb2.Any()
            violation = error_details_pb2.BadRequest.FieldViolation(
                field="tasks", description="at least one task is required")
            detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
            context.abort_with_status(rpc_status.to_status(status_pb2.Status(
                code=code_pb2.INVALID_ARGUMENT, message="tasks: at least one task is required", details=[detail])))
        return task_service_pb2.BatchEnqueueTasksResponse(
            task_ids=[f"{json.loads(t.payload)['args'][0]:026d}@{t.queue}" for t in request.tasks])


@pytest.fixture
def older_broker() -> Iterator[tuple[str, OlderBroker]]:
    servicer = OlderBroker()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    task_service_pb2_grpc.add_TaskServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(grace=None)


def _kinds(requests: list[task_service_pb2.BatchEnqueueTasksRequest]) -> list[str]:
    return ["template" if r.payloads else f"{len(r.tasks)} specs" for r in requests]


def _batch(first: int) -> list[Any]:
    return [signature("tests.work", i).with_options(queue="q") for i in range(first, first + 3)]


def test_the_sync_client_spells_a_batch_out_for_an_older_broker(older_broker: tuple[str, OlderBroker]) -> None:
    address, broker = older_broker
    with Client(address, timeout=5) as client:
        first = client.enqueue_many(_batch(0))
        second = client.enqueue_many(_batch(3))

    assert [h.id for h in first + second] == [f"{i:026d}@q" for i in range(6)]
    assert _kinds(broker.requests) == ["template", "3 specs", "3 specs"]


def test_the_async_client_spells_a_batch_out_for_an_older_broker(older_broker: tuple[str, OlderBroker]) -> None:
    address, broker = older_broker

    async def scenario() -> list[str]:
        async with AsyncClient(address, timeout=5) as client:
            first = await client.enqueue_many(_batch(0))
            second = await client.enqueue_many(_batch(3))
        return [h.id for h in first + second]

    assert asyncio.run(scenario()) == [f"{i:026d}@q" for i in range(6)]
    assert _kinds(broker.requests) == ["template", "3 specs", "3 specs"]

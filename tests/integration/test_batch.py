"""A batch of 10,000 tasks in one BatchEnqueueTasks call: ids in order, every task run once, right results."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import redis
from conveyor.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc

from client_sdk import AsyncClient, TaskInfo, TaskState
from tests.helpers import BrokerProcess, eventually, run_async
from tests.integration.conftest import StartWorker

COUNT = 10_000


def _list(stub: task_service_pb2_grpc.TaskServiceStub, queue: str, state: int) -> list[task_pb2.Task]:
    tasks: list[task_pb2.Task] = []
    token = ""
    while True:
        page = stub.ListTasks(task_service_pb2.ListTasksRequest(
            queue=queue, state=state, page_size=1000, page_token=token), timeout=10)
        tasks.extend(page.tasks)
        token = page.next_page_token
        if not token:
            return tasks


def test_ten_thousand_tasks_in_one_batch_call_all_complete_with_their_results(
    fast_broker: BrokerProcess, start_worker: StartWorker, queue_name: str, redis_client: redis.Redis
) -> None:
    specs = [task_service_pb2.TaskSpec(queue=queue_name, name="worker_sdk.examples.add",
                                       payload=json.dumps({"args": [i, i]}).encode())
             for i in range(COUNT)]
    with grpc.insecure_channel(fast_broker.address) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        started = time.monotonic()
        response = stub.BatchEnqueueTasks(task_service_pb2.BatchEnqueueTasksRequest(tasks=specs), timeout=30)
        assert time.monotonic() - started < 10
        ids = list(response.task_ids)

        assert len(ids) == COUNT
        assert len(set(ids)) == COUNT
        assert all(task_id.endswith("@" + queue_name) for task_id in ids)
        # Ids are ULIDs, time-ordered: request order is their sorted order.
        assert ids == sorted(ids)
        # Nothing runs yet, so the queue holds them all, in submission order.
        assert [t.id for t in _list(stub, queue_name, task_pb2.TASK_STATE_QUEUED)] == ids

        start_worker(queue_name, concurrency=64)

        def drained() -> bool:
            return not _list(stub, queue_name, task_pb2.TASK_STATE_QUEUED) and \
                not _list(stub, queue_name, task_pb2.TASK_STATE_RUNNING)

        eventually(drained, timeout=60, interval=0.5)
        succeeded = _list(stub, queue_name, task_pb2.TASK_STATE_SUCCEEDED)
        assert sorted(t.id for t in succeeded) == ids
        assert {t.attempt for t in succeeded} == {1}  # each ran exactly once
        assert _list(stub, queue_name, task_pb2.TASK_STATE_FAILED) == []

    # Every result, read straight from the store (one pipelined round trip)...
    prefix = f"{{{fast_broker.namespace}:{queue_name}}}:t:"
    pipe = redis_client.pipeline(transaction=False)
    for task_id in ids:
        pipe.hget(prefix + task_id.partition("@")[0], "result")
    stored = pipe.execute()
    assert [json.loads(value) for value in stored] == [2 * i for i in range(COUNT)]

    # ...and a tenth of them through GetTask, as a client sees them.
    sample = list(range(0, COUNT, 10))

    async def get_sample() -> list[TaskInfo]:
        async with AsyncClient(fast_broker.address, timeout=30) as client:
            return list(await asyncio.gather(*(client.get(ids[i]) for i in sample)))

    infos = run_async(get_sample(), timeout=60)
    assert [(info.state, json.loads(info.result or b"null")) for info in infos] == \
        [(TaskState.SUCCEEDED, 2 * i) for i in sample]


def test_a_template_batch_stores_one_task_per_payload_after_the_task_specs(
    fast_broker: BrokerProcess, start_worker: StartWorker, queue_name: str
) -> None:
    def payload(i: int) -> bytes:
        return json.dumps({"args": [i, 100]}).encode()

    specs = [task_service_pb2.TaskSpec(queue=queue_name, name="worker_sdk.examples.add", payload=payload(i))
             for i in range(2)]
    template = task_service_pb2.TaskSpec(queue=queue_name, name="worker_sdk.examples.add", priority=5,
                                         headers={"origin": "template"})
    with grpc.insecure_channel(fast_broker.address) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        response = stub.BatchEnqueueTasks(task_service_pb2.BatchEnqueueTasksRequest(
            tasks=specs, template=template, payloads=[payload(i) for i in range(2, 6)]), timeout=10)
        ids = list(response.task_ids)
        assert len(ids) == 6 and ids == sorted(ids) and list(response.duplicates) == [False] * 6

        stored = [stub.GetTask(task_service_pb2.GetTaskRequest(task_id=i), timeout=5).task for i in ids]
        assert [(t.priority, dict(t.headers)) for t in stored] == \
            [(0, {})] * 2 + [(5, {"origin": "template"})] * 4
        assert [json.loads(t.payload)["args"][0] for t in stored] == list(range(6))

    start_worker(queue_name, concurrency=4)

    async def results() -> list[object]:
        async with AsyncClient(fast_broker.address, timeout=30) as client:
            return list(await asyncio.gather(*(client.result(i, timeout=20) for i in ids)))

    assert run_async(results(), timeout=60) == [100 + i for i in range(6)]

"""Malformed requests: INVALID_ARGUMENT naming the field in a BadRequest detail, and nothing stored.

The module's broker runs on a Redis server of its own, so "nothing stored" is checked on the
whole database: its key set and DBSIZE are the same before and after every rejected call.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import redis
from conveyor.v1 import (
    task_pb2,
    task_service_pb2,
    task_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from client_sdk import Client, InvalidArgumentError, Signature, TaskState, signature
from tests.helpers import BrokerProcess
from tests.integration.conftest import FAST_SETTINGS
from tests.redis_process import RedisProcess

MAX_PAYLOAD = 1024
MAX_BATCH = 5
GOOD_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV@valid"
QUEUE = "valid"


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisProcess]:
    server = RedisProcess()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def strict_broker(own_redis: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    log_path = tmp_path_factory.mktemp("strict-broker") / "broker.log"
    broker = BrokerProcess(redis_url=own_redis.url, log_path=log_path, settings={
        **FAST_SETTINGS, "max_payload_bytes": MAX_PAYLOAD, "max_batch_size": MAX_BATCH})
    broker.start()
    yield broker
    broker.close()


@pytest.fixture
def db(own_redis: RedisProcess) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(own_redis.url, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture
def channel(strict_broker: BrokerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(strict_broker.address) as ch:
        yield ch


@pytest.fixture
def tasks(channel: grpc.Channel) -> task_service_pb2_grpc.TaskServiceStub:
    return task_service_pb2_grpc.TaskServiceStub(channel)


def _snapshot(db: redis.Redis) -> tuple[int, dict[Any, tuple[Any, int]]]:
    """DBSIZE, and every key with its type and size (members, fields or bytes)."""
    sizes = {b"zset": db.zcard, b"hash": db.hlen, b"set": db.scard, b"list": db.llen, b"string": db.strlen}
    keys: dict[Any, tuple[Any, int]] = {}
    for key in db.scan_iter(count=1000):
        kind = db.type(key)
        keys[key] = (kind, int(sizes[kind](key)) if kind in sizes else -1)
    return int(db.dbsize()), keys


def _spec(**fields: Any) -> task_service_pb2.TaskSpec:
    values: dict[str, Any] = {"queue": QUEUE, "name": "worker_sdk.examples.add",
                              "payload": json.dumps({"args": [1, 2]}).encode()}
    values.update(fields)
    return task_service_pb2.TaskSpec(**values)


def _enqueue(**fields: Any) -> Callable[[task_service_pb2_grpc.TaskServiceStub], Any]:
    return lambda stub: stub.EnqueueTask(task_service_pb2.EnqueueTaskRequest(task=_spec(**fields)), timeout=5)


def _delay(seconds: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds)


def _years_ahead(years: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.now(UTC) + timedelta(days=366 * years))
    return stamp


def _get(task_id: str) -> Callable[[task_service_pb2_grpc.TaskServiceStub], Any]:
    return lambda stub: stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task_id), timeout=5)


def _wait(task_id: str, **fields: Any) -> Callable[[task_service_pb2_grpc.TaskServiceStub], Any]:
    return lambda stub: list(stub.WaitTask(task_service_pb2.WaitTaskRequest(task_id=task_id, **fields), timeout=5))


def _cancel(task_id: str, reason: str = "") -> Callable[[task_service_pb2_grpc.TaskServiceStub], Any]:
    return lambda stub: stub.CancelTask(task_service_pb2.CancelTaskRequest(task_id=task_id, reason=reason), timeout=5)


def _list(**fields: Any) -> Callable[[task_service_pb2_grpc.TaskServiceStub], Any]:
    values: dict[str, Any] = {"queue": QUEUE, "state": task_pb2.TASK_STATE_QUEUED}
    values.update(fields)
    return lambda stub: stub.ListTasks(task_service_pb2.ListTasksRequest(**values), timeout=5)


def _batch(specs: list[task_service_pb2.TaskSpec]) -> Callable[[task_service_pb2_grpc.TaskServiceStub], Any]:
    return lambda stub: stub.BatchEnqueueTasks(task_service_pb2.BatchEnqueueTasksRequest(tasks=specs), timeout=5)


def _templated(template: task_service_pb2.TaskSpec | None, payloads: list[bytes],
               specs: tuple[task_service_pb2.TaskSpec, ...] = ()) -> Callable[[Any], Any]:
    request = task_service_pb2.BatchEnqueueTasksRequest(tasks=specs, template=template, payloads=payloads)
    return lambda stub: stub.BatchEnqueueTasks(request, timeout=5)


MALFORMED_IDS = [
    "",
    "not-a-task-id",
    "01ARZ3NDEKTSV4RRFFQ69G5FAV",  # no queue
    "01ARZ3NDEKTSV4RRFFQ69G5FAV@",  # empty queue
    "01ARZ3NDEKTSV4RRFFQ69G5FA@valid",  # 25 characters
    "01ARZ3NDEKTSV4RRFFQ69G5FAU@valid",  # U is not a Crockford digit
    "01ARZ3NDEKTSV4RRFFQ69G5FAV@a:b",  # ':' in the queue
    "01ARZ3NDEKTSV4RRFFQ69G5FAV@" + "q" * 129,
]

CASES: list[tuple[str, Callable[[task_service_pb2_grpc.TaskServiceStub], Any], str]] = [
    ("missing-task", lambda stub: stub.EnqueueTask(task_service_pb2.EnqueueTaskRequest(), timeout=5), "task"),
    ("empty-name", _enqueue(name=""), "task.name"),
    ("257-char-name", _enqueue(name="n" * 257), "task.name"),
    ("name-with-space", _enqueue(name="my task"), "task.name"),
    ("name-with-newline", _enqueue(name="my\ntask"), "task.name"),
    ("empty-queue", _enqueue(queue=""), "task.queue"),
    ("queue-with-braces", _enqueue(queue="a{b}"), "task.queue"),
    ("queue-with-colon", _enqueue(queue="a:b"), "task.queue"),
    ("129-char-queue", _enqueue(queue="q" * 129), "task.queue"),
    ("payload-over-limit", _enqueue(payload=b"x" * (MAX_PAYLOAD + 1)), "task.payload"),
    ("negative-delay", _enqueue(delay=_delay(-1)), "task.delay"),
    ("run-at-100-years-ahead", _enqueue(run_at=_years_ahead(100)), "task.run_at"),
    ("priority-10", _enqueue(priority=10), "task.priority"),
    ("lease-under-a-second", _enqueue(lease_duration=duration_pb2.Duration(nanos=500_000_000)),
     "task.lease_duration"),
    ("jitter-over-one", _enqueue(retry_policy=task_pb2.RetryPolicy(jitter=1.5)), "task.retry_policy.jitter"),
    ("257-char-idempotency-key", _enqueue(idempotency_key="k" * 257), "task.idempotency_key"),
    ("idempotency-key-with-newline", _enqueue(idempotency_key="a\nb"), "task.idempotency_key"),
    ("idempotency-ttl-over-30-days", _enqueue(idempotency_key="k", idempotency_ttl=_delay(31 * 86_400)),
     "task.idempotency_ttl"),
    ("257-char-unique-key", _enqueue(unique_key="u" * 257), "task.unique_key"),
    ("257-char-concurrency-key", _enqueue(concurrency_key="c" * 257), "task.concurrency_key"),
    ("concurrency-limit-over-10000", _enqueue(concurrency_key="c", concurrency_limit=10_001),
     "task.concurrency_limit"),
    ("empty-batch", _batch([]), "tasks"),
    ("batch-over-max-size", _batch([_spec() for _ in range(MAX_BATCH + 1)]), "tasks"),
    ("bad-task-in-the-middle-of-a-batch", _batch([_spec(), _spec(), _spec(), _spec(name=""), _spec()]),
     "tasks[3].name"),
    ("bad-queue-at-the-end-of-a-batch", _batch([_spec(), _spec(queue="a b")]), "tasks[1].queue"),
    ("payloads-without-template", _templated(None, [b"{}"]), "template"),
    ("template-without-payloads", _templated(_spec(payload=b""), []), "payloads"),
    ("template-with-a-payload", _templated(_spec(), [b"{}"]), "template.payload"),
    ("template-bad-priority", _templated(_spec(payload=b"", priority=10), [b"{}"]), "template.priority"),
    ("template-payload-over-max", _templated(_spec(payload=b""), [b"{}", b"x" * (MAX_PAYLOAD + 1)]),
     "payloads[1]"),
    ("tasks-and-payloads-over-max-size", _templated(_spec(payload=b""), [b"{}"] * 3, (_spec(),) * 3), "tasks"),
    *((f"get-id-{i}", _get(bad), "task_id") for i, bad in enumerate(MALFORMED_IDS)),
    *((f"wait-id-{i}", _wait(bad), "task_id") for i, bad in enumerate(MALFORMED_IDS)),
    *((f"cancel-id-{i}", _cancel(bad), "task_id") for i, bad in enumerate(MALFORMED_IDS)),
    ("wait-negative-timeout", _wait(GOOD_ID, timeout=_delay(-1)), "timeout"),
    ("cancel-reason-too-long", _cancel(GOOD_ID, "r" * 1025), "reason"),
    ("list-unknown-state", _list(state=99), "state"),
    ("list-unspecified-state", _list(state=task_pb2.TASK_STATE_UNSPECIFIED), "state"),
    ("list-bad-queue", _list(queue="a:b"), "queue"),
    ("list-page-too-big", _list(page_size=1001), "page_size"),
    ("list-malformed-page-token", _list(page_token="not a token"), "page_token"),
    ("list-page-token-of-another-state", _list(page_token="eyJ4IjogMX0="), "page_token"),
]


def _add(x: object) -> Signature:
    return signature("worker_sdk.examples.add", x, 1).with_options(queue=QUEUE)


def _violations(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None, "no rich status details"
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(v.field for v in bad.field_violations)
    return fields


@pytest.mark.parametrize(("call", "field"), [(c, f) for _, c, f in CASES], ids=[i for i, _, _ in CASES])
def test_a_malformed_request_is_refused_naming_the_field_and_nothing_is_stored(
    tasks: task_service_pb2_grpc.TaskServiceStub, db: redis.Redis,
    call: Callable[[task_service_pb2_grpc.TaskServiceStub], Any], field: str,
) -> None:
    before = _snapshot(db)
    with pytest.raises(grpc.RpcError) as caught:
        call(tasks)
    error = caught.value
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert _violations(error) == [field]
    assert field in (error.details() or "")
    assert _snapshot(db) == before


def test_a_rejected_batch_stores_none_of_its_good_tasks(
    tasks: task_service_pb2_grpc.TaskServiceStub, db: redis.Redis, strict_broker: BrokerProcess
) -> None:
    queue = "batch-all-or-nothing"
    before = _snapshot(db)
    with pytest.raises(grpc.RpcError) as caught:
        tasks.BatchEnqueueTasks(task_service_pb2.BatchEnqueueTasksRequest(
            tasks=[_spec(queue=queue), _spec(queue=queue), _spec(queue=queue), _spec(queue=queue, priority=10)]),
            timeout=5)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(caught.value) == ["tasks[3].priority"]
    assert _snapshot(db) == before
    with Client(strict_broker.address) as client:
        assert list(client.list(queue, TaskState.QUEUED)) == []


@pytest.mark.parametrize(("action", "field"), [
    (lambda c: c.submit(QUEUE, "has space", b"{}"), "task.name"),
    (lambda c: c.submit(QUEUE, "worker_sdk.examples.add", b"x" * (MAX_PAYLOAD + 1)), "task.payload"),
    (lambda c: c.get("nope"), "task_id"),
    (lambda c: c.wait("nope", timeout=2), "task_id"),
    (lambda c: c.cancel("nope"), "task_id"),
    (lambda c: list(c.list("a:b", TaskState.QUEUED)), "queue"),
    # enqueue_many sends one task over many arguments as a template and payloads; the field is
    # still named as the documented tasks[i].<field>
    (lambda c: c.enqueue_many([_add(1), _add(2), _add("x" * MAX_PAYLOAD)]), "tasks[2].payload"),
    (lambda c: c.enqueue_many([_add(1).with_options(queue="a b")] * 2), "tasks[0].queue"),
], ids=["submit-name", "submit-payload", "get", "wait", "cancel", "list-queue", "batch-payload", "batch-queue"])
def test_the_client_sdk_raises_invalid_argument_error_with_the_field(
    strict_broker: BrokerProcess, db: redis.Redis, action: Callable[[Client], Any], field: str
) -> None:
    before = _snapshot(db)
    with Client(strict_broker.address) as client, pytest.raises(InvalidArgumentError) as caught:
        action(client)
    assert caught.value.field == field
    assert caught.value.code == "INVALID_ARGUMENT"
    assert _snapshot(db) == before


def test_values_at_the_limits_are_accepted(
    tasks: task_service_pb2_grpc.TaskServiceStub, strict_broker: BrokerProcess
) -> None:
    """The other side of each boundary above: the largest accepted values store a task."""
    specs = [
        _spec(name="n" * 256),
        _spec(queue="q" * 128),
        _spec(payload=b"x" * MAX_PAYLOAD),
        _spec(priority=9),
        _spec(delay=_delay(0)),
        _spec(run_at=_years_ahead(9)),
        _spec(name="odd.but_valid-Name:with/punctuation@1"),
    ]
    ids = [tasks.EnqueueTask(task_service_pb2.EnqueueTaskRequest(task=s), timeout=5).task_id for s in specs]
    ids += list(tasks.BatchEnqueueTasks(task_service_pb2.BatchEnqueueTasksRequest(
        tasks=[_spec() for _ in range(MAX_BATCH)]), timeout=5).task_ids)
    with Client(strict_broker.address) as client:
        assert [client.get(i).id for i in ids] == ids
        assert client.get(ids[0]).name == "n" * 256
        assert client.get(ids[5]).state is TaskState.SCHEDULED


def test_a_connect_stream_whose_first_message_is_not_a_hello_is_refused(
    channel: grpc.Channel, db: redis.Redis, strict_broker: BrokerProcess
) -> None:
    stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
    before = _snapshot(db)
    started = time.monotonic()

    def messages() -> Iterator[worker_service_pb2.WorkerMessage]:
        yield worker_service_pb2.WorkerMessage(credit=worker_service_pb2.Credit(credits=4))
        time.sleep(5)  # keep our side open: the broker must end the stream, not us

    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Connect(messages(), timeout=10))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(caught.value) == ["hello"]
    assert time.monotonic() - started < 3
    assert _snapshot(db) == before
    assert strict_broker.metric("conveyor_workers_connected") == 0


@pytest.mark.parametrize(("hello", "field"), [
    (worker_service_pb2.Hello(worker_id="", queues=["valid"], concurrency=1), "hello.worker_id"),
    (worker_service_pb2.Hello(worker_id="w", queues=[], concurrency=1), "hello.queues"),
    (worker_service_pb2.Hello(worker_id="w", queues=["ok", "a:b"], concurrency=1), "hello.queues[1]"),
    (worker_service_pb2.Hello(worker_id="w", queues=["valid"], concurrency=0), "hello.concurrency"),
], ids=["no-worker-id", "no-queues", "bad-queue", "zero-concurrency"])
def test_a_malformed_hello_is_refused_naming_the_field(
    channel: grpc.Channel, hello: worker_service_pb2.Hello, field: str
) -> None:
    stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Connect(iter([worker_service_pb2.WorkerMessage(hello=hello)]), timeout=5))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(caught.value) == [field]



def test_a_batch_over_the_brokers_limit_is_refused_and_templates_stay_on(
    strict_broker: BrokerProcess, db: redis.Redis
) -> None:
    before = _snapshot(db)
    with Client(strict_broker.address) as client:
        with pytest.raises(InvalidArgumentError) as caught:
            client.enqueue_many([_add(i) for i in range(MAX_BATCH + 1)])
        assert caught.value.field == "tasks"
        assert _snapshot(db) == before
        # Refused for its size, not for its form: the next batch still travels as a template.
        assert client._batch_templates
        handles = client.enqueue_many([_add(i) for i in range(2)])
        assert client._batch_templates and len(handles) == 2

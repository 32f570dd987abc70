"""Locks and limits end to end: idempotency and unique keys under concurrent submits and across
brokers, per-key concurrency and queue limits with real workers, the CLI, metrics and bad input."""

from __future__ import annotations

import asyncio
import json
import math
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from conveyor.v1 import admin_service_pb2, admin_service_pb2_grpc

from client_sdk import AsyncClient, Client, QueueLimits, TaskState, UnavailableError
from client_sdk import cli as client_cli
from tests.helpers import BrokerProcess, WorkerFactory, WorkerProcess, eventually, metric_value, run_async
from tests.integration.conftest import MakeBroker, wait_connected
from tests.integration.limits_tasks import span
from tests.redis_process import RedisProcess
from worker_sdk.examples import add

LIMITS_WORKER = "tests.integration.limits_tasks:worker"


def _start(worker_factory: WorkerFactory, broker: BrokerProcess, queue: str, concurrency: int = 8) -> WorkerProcess:
    process = worker_factory(LIMITS_WORKER, "--queues", queue, "--concurrency", str(concurrency), broker=broker)
    wait_connected(process)
    return process


def _spans(path: Path) -> dict[str, list[tuple[float, float]]]:
    """(start, end) of every recorded run, by label."""
    runs: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        label, start, end = line.split()
        runs[label].append((float(start), float(end)))
    return runs


def _most_at_once(runs: list[tuple[float, float]]) -> int:
    """The largest number of runs that overlapped at one moment."""
    edges = sorted([(start, 1) for start, _ in runs] + [(end, -1) for _, end in runs])
    most = now = 0
    for _, step in edges:  # at equal times an end (-1) sorts first: touching runs do not overlap
        now += step
        most = max(most, now)
    return most


# --- idempotency keys ----------------------------------------------------------------------------


def test_one_hundred_concurrent_submits_with_one_idempotency_key_make_one_task(
    fast_broker: BrokerProcess, fast_client: Client, queue_name: str
) -> None:
    async def submit_all() -> list[tuple[str, bool]]:
        async with AsyncClient(fast_broker.address) as client:
            task = add.with_options(queue=queue_name, idempotency_key="order-42")
            handles = await asyncio.gather(*(client.enqueue(task, i, i) for i in range(100)))
            return [(h.id, h.duplicate) for h in handles]

    answers = run_async(submit_all())

    assert len({task_id for task_id, _ in answers}) == 1
    assert sum(not duplicate for _, duplicate in answers) == 1
    [stored] = list(fast_client.list(queue_name, TaskState.QUEUED))
    assert stored.id == answers[0][0]
    assert stored.idempotency_key == "order-42"
    assert fast_broker.metric("conveyor_duplicate_submits_total", queue=queue_name, kind="idempotency") == 99
    assert fast_broker.metric("conveyor_tasks_enqueued_total", queue=queue_name) == 1


def test_an_idempotency_key_answers_the_first_task_across_brokers_and_after_a_failover(
    make_broker: MakeBroker, queue_name: str
) -> None:
    first, second = make_broker(), make_broker()
    task = add.with_options(queue=queue_name, idempotency_key="pay-7", idempotency_ttl=60)
    with Client(first.address) as a:
        original = a.enqueue(task, 1, 2)
    first.kill()  # the client's broker dies; the retry goes to another replica

    with Client(second.address) as b:
        retried = b.enqueue(task, 1, 2)
        batch = b.enqueue_many([task.s(1, 2), add.with_options(queue=queue_name).s(3, 4)])

    assert (original.duplicate, retried.duplicate) == (False, True)
    assert retried.id == original.id
    assert [h.id == original.id for h in batch] == [True, False]
    assert [h.duplicate for h in batch] == [True, False]


# --- unique keys ---------------------------------------------------------------------------------


def test_a_unique_key_under_concurrent_submits_keeps_one_task_until_it_finishes(
    fast_broker: BrokerProcess, fast_client: Client, worker_factory: WorkerFactory, queue_name: str
) -> None:
    task = add.with_options(queue=queue_name, unique_key="nightly-report")

    async def submit_all() -> list[tuple[str, bool]]:
        async with AsyncClient(fast_broker.address) as client:
            handles = await asyncio.gather(*(client.enqueue(task, i, 0) for i in range(50)))
            return [(h.id, h.duplicate) for h in handles]

    answers = run_async(submit_all())
    assert len({task_id for task_id, _ in answers}) == 1
    assert sum(not duplicate for _, duplicate in answers) == 1
    holder = fast_client.handle(answers[0][0])

    _start(worker_factory, fast_broker, queue_name)
    holder.result(timeout=15)
    after = fast_client.enqueue(task, 5, 5)

    assert (after.duplicate, after.id != holder.id) == (False, True)
    assert after.result(timeout=15) == 10
    assert fast_broker.metric("conveyor_duplicate_submits_total", queue=queue_name, kind="unique") == 49


# --- concurrency keys ----------------------------------------------------------------------------


def test_concurrency_keys_are_never_exceeded_and_do_not_hold_back_other_tasks(
    fast_broker: BrokerProcess, fast_client: Client, worker_factory: WorkerFactory, queue_name: str,
    tmp_path: Path,
) -> None:
    trace = tmp_path / "spans.txt"
    one_at_a_time = span.with_options(queue=queue_name, concurrency_key="customer-1")
    two_at_a_time = span.with_options(queue=queue_name, concurrency_key="customer-2", concurrency_limit=2)
    free = span.with_options(queue=queue_name)
    handles = [fast_client.enqueue(one_at_a_time, str(trace), "c1", 0.25) for _ in range(5)]
    handles += [fast_client.enqueue(two_at_a_time, str(trace), "c2", 0.2) for _ in range(6)]
    handles += [fast_client.enqueue(free, str(trace), "free", 0.0) for _ in range(10)]

    _start(worker_factory, fast_broker, queue_name)
    _start(worker_factory, fast_broker, queue_name)
    for handle in handles:
        handle.result(timeout=20)

    runs = _spans(trace)
    assert (len(runs["c1"]), len(runs["c2"]), len(runs["free"])) == (5, 6, 10)
    assert _most_at_once(runs["c1"]) == 1
    assert _most_at_once(runs["c2"]) == 2
    # The free tasks, submitted last, did not wait for the limited ones.
    assert max(end for _, end in runs["free"]) < max(start for start, _ in runs["c1"])
    info = fast_client.get(handles[0].id)
    assert (info.concurrency_key, info.concurrency_limit) == ("customer-1", 1)


def test_a_task_held_back_by_its_key_is_listed_queued_and_can_be_cancelled(
    fast_broker: BrokerProcess, fast_client: Client, worker_factory: WorkerFactory, queue_name: str,
    tmp_path: Path,
) -> None:
    trace = tmp_path / "spans.txt"
    keyed = span.with_options(queue=queue_name, concurrency_key="k")
    running = fast_client.enqueue(keyed, str(trace), "first", 1.5)
    held = fast_client.enqueue(keyed, str(trace), "held", 0.0)
    last = fast_client.enqueue(keyed, str(trace), "last", 0.0)
    _start(worker_factory, fast_broker, queue_name)
    eventually(lambda: running.get().state is TaskState.RUNNING, timeout=10)

    eventually(lambda: fast_client.get_queue(queue_name).queued == 2 and fast_client.get_queue(queue_name).running == 1)
    assert [i.id for i in fast_client.list(queue_name, TaskState.QUEUED)] == [held.id, last.id]
    assert held.cancel() is TaskState.CANCELLED

    assert last.result(timeout=15) == "last"
    assert [label for label in _spans(trace)] == ["first", "last"]


# --- queue limits --------------------------------------------------------------------------------


def test_max_running_caps_a_queue_across_workers_and_freed_slots_are_used_at_once(
    fast_broker: BrokerProcess, fast_client: Client, worker_factory: WorkerFactory, queue_name: str,
    tmp_path: Path,
) -> None:
    trace = tmp_path / "spans.txt"
    info = fast_client.set_queue_limits(queue_name, max_running=2)
    assert info.limits == QueueLimits(max_running=2)
    _start(worker_factory, fast_broker, queue_name, concurrency=4)
    _start(worker_factory, fast_broker, queue_name, concurrency=4)

    handles = [fast_client.enqueue(span.with_options(queue=queue_name), str(trace), "t", 0.2) for _ in range(8)]
    # Four rounds of two: a freed slot that waited for the 5 s safety-net poll would miss this deadline.
    for handle in handles:
        handle.result(timeout=4)

    assert _most_at_once(_spans(trace)["t"]) == 2
    assert fast_broker.metric("conveyor_lease_deferrals_total", queue=queue_name, limit="max_running") > 0


def test_the_rate_limit_holds_within_ten_percent_over_ten_seconds_across_two_brokers(
    make_broker: MakeBroker, worker_factory: WorkerFactory, queue_name: str
) -> None:
    rate, burst, seconds = 20.0, 5, 10
    brokers = [make_broker(), make_broker()]
    with Client(brokers[0].address) as client:
        client.set_queue_limits(queue_name, rate_per_second=rate, rate_burst=burst)
        handles = client.enqueue_many(add.with_options(queue=queue_name).s(i, i) for i in range(int(rate * 11.5)))
        for broker in brokers:
            _start(worker_factory, broker, queue_name, concurrency=16)
        eventually(lambda: client.get_queue(queue_name).succeeded == len(handles), timeout=30, interval=0.5)
        starts = sorted(info.started_at for info in client.list(queue_name, TaskState.SUCCEEDED, page_size=1000)
                        if info.started_at is not None)

    window_end = starts[0] + timedelta(seconds=seconds)
    started = sum(1 for moment in starts if moment < window_end)
    expected = rate * seconds
    assert math.isclose(started, expected, rel_tol=0.10), f"{started} tasks started in {seconds}s, expected {expected}"
    assert sum(b.metric("conveyor_lease_deferrals_total", queue=queue_name, limit="rate") for b in brokers) > 0


def test_queue_limits_are_read_back_listed_and_cleared(fast_client: Client, queue_name: str) -> None:
    set_to = fast_client.set_queue_limits(queue_name, max_running=3, rate_per_second=2.5, rate_burst=4)
    fast_client.enqueue(add.with_options(queue=queue_name), 1, 1)

    shown = fast_client.get_queue(queue_name)
    listed = {q.name: q for q in fast_client.list_queues()}

    assert set_to.limits == shown.limits == QueueLimits(max_running=3, rate_per_second=2.5, rate_burst=4)
    assert shown.queued == 1
    assert listed[queue_name] == shown
    assert fast_client.set_queue_limits(queue_name).limits == QueueLimits()


def test_the_async_client_sets_reads_and_lists_queue_limits(fast_broker: BrokerProcess, queue_name: str) -> None:
    async def scenario() -> tuple[QueueLimits, QueueLimits, bool]:
        async with AsyncClient(fast_broker.address) as client:
            set_to = await client.set_queue_limits(queue_name, max_running=1, rate_per_second=100)
            shown = await client.get_queue(queue_name)
            listed = queue_name in {q.name for q in await client.list_queues()}
            return set_to.limits, shown.limits, listed

    set_to, shown, listed = run_async(scenario())

    assert set_to == shown == QueueLimits(max_running=1, rate_per_second=100)
    assert listed


# --- CLI -----------------------------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], broker: BrokerProcess, *argv: str) -> list[dict[str, object]]:
    assert client_cli.main([*argv, "--broker", broker.address]) == 0, capsys.readouterr().err
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_the_cli_submits_with_keys_and_sets_shows_and_lists_queue_limits(
    fast_broker: BrokerProcess, queue_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--queue", queue_name, "--idempotency-key", "k1", "--concurrency-key", "c", "--concurrency-limit", "2"]
    [first] = _cli(capsys, fast_broker, "enqueue", "worker_sdk.examples.add", "--args", "[1, 2]", *flags)
    [again] = _cli(capsys, fast_broker, "enqueue", "worker_sdk.examples.add", "--args", "[1, 2]", *flags)
    [task] = _cli(capsys, fast_broker, "get", str(first["id"]))
    [limits] = _cli(capsys, fast_broker, "queue", "limits", queue_name, "--max-running", "5", "--rate", "1.5")
    [shown] = _cli(capsys, fast_broker, "queue", "show", queue_name)
    listed = _cli(capsys, fast_broker, "queue", "list")

    assert "duplicate" not in first and again == {**first, "duplicate": True}
    assert (task["idempotency_key"], task["concurrency_key"], task["concurrency_limit"]) == ("k1", "c", 2)
    assert limits["limits"] == {"max_running": 5, "rate_per_second": 1.5, "rate_burst": 0}
    assert shown == limits and shown["counts"]["queued"] == 1  # type: ignore[index]
    assert shown in listed


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("request_", "field"), [
    (admin_service_pb2.SetQueueLimitsRequest(queue="bad queue"), "queue"),
    (admin_service_pb2.SetQueueLimitsRequest(queue="q", limits=admin_service_pb2.QueueLimits(rate_per_second=-1)),
     "limits.rate_per_second"),
    (admin_service_pb2.SetQueueLimitsRequest(queue="q", limits=admin_service_pb2.QueueLimits(
        rate_per_second=float("nan"))), "limits.rate_per_second"),
    (admin_service_pb2.SetQueueLimitsRequest(queue="q", limits=admin_service_pb2.QueueLimits(
        rate_per_second=2e6)), "limits.rate_per_second"),
    (admin_service_pb2.SetQueueLimitsRequest(queue="q", limits=admin_service_pb2.QueueLimits(
        max_running=2_000_000)), "limits.max_running"),
    (admin_service_pb2.SetQueueLimitsRequest(queue="q", limits=admin_service_pb2.QueueLimits(
        rate_per_second=1, rate_burst=2_000_000)), "limits.rate_burst"),
])
def test_bad_queue_limits_are_invalid_argument_naming_the_field(
    fast_broker: BrokerProcess, request_: admin_service_pb2.SetQueueLimitsRequest, field: str
) -> None:
    with grpc.insecure_channel(fast_broker.address) as channel:
        stub = admin_service_pb2_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.SetQueueLimits(request_, timeout=5)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert field in (caught.value.details() or "")
        with pytest.raises(grpc.RpcError) as unknown:
            stub.GetQueue(admin_service_pb2.GetQueueRequest(queue=""), timeout=5)
        assert unknown.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_the_sdk_refuses_bad_keys_and_limits_before_sending(fast_client: Client, queue_name: str) -> None:
    with pytest.raises(ValueError, match="concurrency_limit"):
        add.with_options(concurrency_key="c", concurrency_limit=0)
    with pytest.raises(ValueError, match="idempotency_key"):
        add.with_options(idempotency_key="")
    with pytest.raises(ValueError, match="rate_per_second"):
        fast_client.set_queue_limits(queue_name, rate_per_second=-1)


# --- client retries ------------------------------------------------------------------------------


def test_a_submit_with_an_idempotency_key_is_retried_through_an_outage_and_one_without_is_not(
    make_broker: MakeBroker, queue_name: str
) -> None:
    """The unary path (a broker without client sessions): each EnqueueTask call is counted."""
    store = RedisProcess()
    store.start()
    try:
        broker = make_broker(redis_url=store.url, client_sessions=False)
        with Client(broker.address) as client, ThreadPoolExecutor(1) as pool:
            calls: list[float] = []
            sessions = client._sessions._calls  # submits fall back to EnqueueTask on the session's channel
            stub = sessions._stub

            class Counted:
                def __getattr__(self, name: str) -> object:
                    return getattr(stub(), name)

                def EnqueueTask(self, request: object, timeout: float) -> object:
                    calls.append(timeout)
                    return stub().EnqueueTask(request, timeout=timeout)

            sessions._stub = Counted
            store.stop()
            with pytest.raises(UnavailableError):
                client.enqueue(add.with_options(queue=queue_name), 1, 2)
            assert len(calls) == 1  # no key: a retry could submit twice, so none is made

            pending = pool.submit(client.enqueue, add.with_options(queue=queue_name, idempotency_key="k"), 1, 2)
            eventually(lambda: len(calls) >= 3, timeout=5)  # refused, then retried
            store.start()
            handle = pending.result(timeout=15)

            assert not handle.duplicate
            assert client.enqueue(add.with_options(queue=queue_name, idempotency_key="k"), 1, 2).id == handle.id
            assert [info.id for info in client.list(queue_name, TaskState.QUEUED)] == [handle.id]
    finally:
        store.close()


def test_on_a_session_a_keyed_submit_is_retried_through_an_outage_and_one_without_is_not(
    make_broker: MakeBroker, queue_name: str
) -> None:
    """The session path: the broker counts the submit calls it receives."""
    store = RedisProcess()
    store.start()
    try:
        broker = make_broker(redis_url=store.url)

        def submits() -> float:
            return metric_value(broker.metrics(), "conveyor_client_session_calls_total", kind="submit")

        with Client(broker.address) as client, ThreadPoolExecutor(1) as pool:
            client.enqueue(add.with_options(queue=queue_name), 0, 0)  # the session is open
            assert submits() == 1
            store.stop()
            with pytest.raises(UnavailableError):
                client.enqueue(add.with_options(queue=queue_name), 1, 2)
            assert submits() == 2  # no key: a retry could submit twice, so none is made

            pending = pool.submit(client.enqueue, add.with_options(queue=queue_name, idempotency_key="k"), 1, 2)
            eventually(lambda: submits() >= 4, timeout=5)  # refused, then retried
            store.start()
            handle = pending.result(timeout=15)

            assert not handle.duplicate
            assert client.enqueue(add.with_options(queue=queue_name, idempotency_key="k"), 1, 2).duplicate
            assert len(list(client.list(queue_name, TaskState.QUEUED))) == 2
    finally:
        store.close()

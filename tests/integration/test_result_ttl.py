"""Results are kept for their TTL, then the task is gone: NOT_FOUND, and no index still names it."""

from __future__ import annotations

import time

import pytest
import redis

from client_sdk import Client, NotFoundError, TaskState
from tests.helpers import BrokerProcess, eventually
from tests.integration.conftest import MakeBroker, StartWorker
from worker_sdk.examples import add


def _mentions(client: redis.Redis, namespace: str, queue: str, ulid: str) -> list[str]:
    """Every key of the queue that holds the ulid (as a key name, or as a member of an index)."""
    found = []
    for raw in client.scan_iter(match=f"{{{namespace}:{queue}}}*", count=1000):
        key = raw.decode()
        if ulid in key or (client.type(raw) == b"zset" and client.zscore(raw, ulid) is not None):
            found.append(key)
    return found


def test_a_result_with_a_one_second_ttl_is_gone_shortly_after_the_task_finishes(
    fast_client: Client, fast_broker: BrokerProcess, start_worker: StartWorker, queue_name: str,
    redis_client: redis.Redis,
) -> None:
    start_worker(queue_name)
    short = fast_client.enqueue(add.with_options(queue=queue_name, result_ttl=1), 1, 1)
    kept = fast_client.enqueue(add.with_options(queue=queue_name), 2, 2)
    assert short.result(timeout=15) == 2
    finished = time.monotonic()
    assert kept.result(timeout=15) == 4
    info = short.get()
    assert info.result_ttl is not None and info.result_ttl.total_seconds() == 1

    def gone() -> bool:
        try:
            short.get()
        except NotFoundError:
            return True
        return False

    eventually(gone, timeout=5, interval=0.1)
    assert time.monotonic() - finished >= 0.9
    assert time.monotonic() - finished < 3
    with pytest.raises(NotFoundError):
        short.wait(timeout=2)
    with pytest.raises(NotFoundError):
        short.cancel()

    # The finished-set entry is dropped by the next trim; nothing else still names the task.
    ulid = short.id.partition("@")[0]
    eventually(lambda: _mentions(redis_client, fast_broker.namespace, queue_name, ulid) == [], timeout=12,
               interval=0.2)
    assert short.id not in [t.id for t in fast_client.list(queue_name, TaskState.SUCCEEDED)]

    # The task with the broker's default TTL (a day) is still there, result and all.
    assert kept.get().state is TaskState.SUCCEEDED
    assert kept.result(timeout=5) == 4
    assert [t.id for t in fast_client.list(queue_name, TaskState.SUCCEEDED)] == [kept.id]
    ttl_ms = redis_client.pttl(f"{{{fast_broker.namespace}:{queue_name}}}:t:{kept.id.partition('@')[0]}")
    assert 86_000_000 < ttl_ms <= 86_400_000


def test_a_broker_wide_result_ttl_applies_to_tasks_that_set_none(
    make_broker: MakeBroker, start_worker: StartWorker, queue_name: str
) -> None:
    broker = make_broker(result_ttl_seconds=1)
    start_worker(queue_name, broker=broker)
    with Client(broker.address) as client:
        handle = client.enqueue(add.with_options(queue=queue_name), 1, 2)
        assert handle.result(timeout=15) == 3

        def gone() -> bool:
            try:
                handle.get()
            except NotFoundError:
                return True
            return False

        eventually(gone, timeout=5, interval=0.1)

"""Fault-tier fixtures: brokers with short leases, workers on tests/faults/tasks.py, a private Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.helpers import BrokerFactory, BrokerProcess, WorkerFactory, WorkerProcess
from tests.redis_process import RedisProcess

# The Worker of the fault tier's tasks.
FAULT_WORKER = "tests.faults.tasks:worker"

# Short leases and fast sweeps, so a lost lease shows within a couple of seconds.
FAST = {"lease_seconds": 2, "reap_interval_seconds": 0.2, "promote_interval_seconds": 0.1,
        "redis_timeout_seconds": 2, "shutdown_grace_seconds": 5}


class FaultWorkerFactory(Protocol):
    """The `fault_worker` fixture."""

    def __call__(self, broker: BrokerProcess, *, concurrency: int = 1, grace: float | None = None,
                 wait: bool = True) -> WorkerProcess: ...


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    """Where this test's tasks journal their executions (see tasks.py)."""
    return tmp_path / "journal.jsonl"


@pytest.fixture
def fault_broker(broker_factory: BrokerFactory) -> Callable[..., BrokerProcess]:
    """Starts a broker with FAST settings; keyword arguments override them."""

    def make(**settings: object) -> BrokerProcess:
        merged: dict[str, Any] = {**FAST, **settings}
        return broker_factory(**merged)

    return make


@pytest.fixture
def fault_worker(worker_factory: WorkerFactory, queue_name: str) -> FaultWorkerFactory:
    """Starts a worker process on FAULT_WORKER that consumes this test's queue.

    With `wait` (the default) it returns once the broker counts one more connected worker.
    """

    def make(broker: BrokerProcess, *, concurrency: int = 1, grace: float | None = None,
             wait: bool = True) -> WorkerProcess:
        args = ["--queues", queue_name, "--concurrency", str(concurrency)]
        if grace is not None:
            args += ["--shutdown-grace", str(grace)]
        before = broker.metric("conveyor_workers_connected") if wait else 0
        process = worker_factory(FAULT_WORKER, *args, broker=broker)
        if wait:
            broker.wait_for_workers(int(before) + 1, watch=[process])
        return process

    return make


@pytest.fixture
def private_redis() -> Iterator[RedisProcess]:
    """A server of this test alone (append-only, everysec), free to be stopped, killed and restarted."""
    server = RedisProcess()
    server.start()
    yield server
    server.close()

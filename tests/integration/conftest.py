"""Integration fixtures: the whole path SDK → gRPC → broker → Redis, with real worker processes."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers import BrokerFactory, BrokerProcess, WorkerFactory, WorkerProcess, eventually
from tests.redis_process import RedisProcess

if TYPE_CHECKING:
    from client_sdk import Client

# The Worker that runs the integration suite's example tasks (tests/integration/tasks.py).
TASKS_WORKER = "tests.integration.tasks:worker"

# Short leases and fast loops, so the suite waits in tenths of seconds, not in broker defaults. The
# WaitTask safety-net poll stays at a minute: every waiter in the suite is woken by pub/sub.
FAST_SETTINGS: dict[str, object] = {
    "lease_seconds": 3,
    "reap_interval_seconds": 0.2,
    "promote_interval_seconds": 0.1,
    "wait_poll_seconds": 60,
}

_module_namespaces = itertools.count()
_module_brokers: list[BrokerProcess] = []

StartWorker = Callable[..., WorkerProcess]
MakeBroker = Callable[..., BrokerProcess]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.failed and "fast_broker" in getattr(item, "fixturenames", ()):
        for broker in _module_brokers:
            report.sections.append((f"module broker {broker.address} log ({broker.log_path})",
                                    broker.log_tail(80)))
    return report


@pytest.fixture
def worker(broker: BrokerProcess, worker_factory: WorkerFactory) -> WorkerProcess:
    """One worker process on TASKS_WORKER, connected to this test's broker before the test starts."""
    process = worker_factory(TASKS_WORKER, broker=broker)
    broker.wait_for_workers(1, watch=[process])
    return process


@pytest.fixture
def shared_client(shared_broker: BrokerProcess) -> Iterator[Client]:
    """A sync client_sdk.Client of the session's shared broker."""
    from client_sdk import Client

    with Client(shared_broker.address) as c:
        yield c


@pytest.fixture(scope="module")
def fast_broker(redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One broker per test module, with FAST_SETTINGS and a key namespace of its own.

    Tests that share it keep apart by using their own queue (the `queue_name` fixture).
    """
    log_path = tmp_path_factory.mktemp("fast-broker") / "broker.log"
    broker = BrokerProcess(redis_url=redis_server.url, log_path=log_path,
                           settings={"namespace": f"it{next(_module_namespaces)}", **FAST_SETTINGS})
    broker.start()
    _module_brokers.append(broker)
    yield broker
    _module_brokers.remove(broker)
    broker.close()


@pytest.fixture
def make_broker(broker_factory: BrokerFactory) -> MakeBroker:
    """Starts a broker of this test alone: FAST_SETTINGS plus the given overrides (`make_broker(max_batch_size=5)`)."""

    def make(**overrides: object) -> BrokerProcess:
        settings: dict[str, Any] = {**FAST_SETTINGS, **overrides}
        return broker_factory(**settings)

    return make


@pytest.fixture
def fast_client(fast_broker: BrokerProcess) -> Iterator[Client]:
    """A sync client_sdk.Client of the module's fast broker."""
    from client_sdk import Client

    with Client(fast_broker.address) as c:
        yield c


def wait_connected(worker: WorkerProcess, timeout: float = 15.0) -> None:
    """Waits until the worker's log says its Connect stream was welcomed (fails early if it died)."""

    def connected() -> bool:
        worker.check_alive()
        return "connected broker_id=" in worker.log

    eventually(connected, timeout=timeout, interval=0.05)


@pytest.fixture
def start_worker(worker_factory: WorkerFactory, request: pytest.FixtureRequest) -> StartWorker:
    """Starts a TASKS_WORKER process on the given queue and waits until it is connected.

    `start_worker(queue, concurrency=1, broker=other)`; the broker defaults to the module's fast one.
    """

    def start(queue: str, *, concurrency: int = 8, broker: BrokerProcess | None = None,
              wait: bool = True) -> WorkerProcess:
        if broker is None:
            broker = request.getfixturevalue("fast_broker")
        process = worker_factory(TASKS_WORKER, "--queues", queue, "--concurrency", str(concurrency),
                                 broker=broker)
        if wait:
            wait_connected(process)
        return process

    return start


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    """A file the tasks of this test append their traces to (absent until a task writes)."""
    return tmp_path / "trace.txt"

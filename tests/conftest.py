"""Fixtures shared by every test tier: a private Redis-compatible server, real brokers, real workers.

Every process a fixture starts runs in its own process group, is SIGKILLed at teardown, and is
also tied to the test process by the kernel, so nothing outlives `make test`. When a test fails,
the log tails of the processes it used are added to its report.
"""

from __future__ import annotations

import functools
import itertools
import re
import signal
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis

from tests.helpers import (
    BrokerFactory,
    BrokerProcess,
    WorkerFactory,
    WorkerProcess,
    kill_all_children,
    log_tail,
)
from tests.redis_process import RedisProcess

if TYPE_CHECKING:
    from client_sdk import AsyncClient, Client

_names = itertools.count()
_namespaces = itertools.count()
# (label, log path) of every process a test used, for its failure report.
_LOGS = pytest.StashKey[list[tuple[str, Path]]]()
_shared: list[BrokerProcess] = []


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # A SIGTERM to pytest (a CI runner giving up) would skip every teardown; as an interrupt,
    # pytest still tears the fixtures down and their processes with them.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate_as_interrupt)


def pytest_unconfigure(config: pytest.Config) -> None:
    kill_all_children()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.failed:
        saved: list[tuple[str, Path]] = item.stash.get(_LOGS, [])
        logs = [*saved]
        if "shared_broker" in getattr(item, "fixturenames", ()) and _shared:
            logs.append((f"shared broker {_shared[0].address}", _shared[0].log_path))
        for label, path in logs:
            report.sections.append((f"{label} log ({path})", log_tail(path, lines=80)))
    return report


def _remember_log(request: pytest.FixtureRequest, label: str, path: Path) -> None:
    request.node.stash.setdefault(_LOGS, []).append((label, path))


# --- Redis -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    """One server for the session, on a free port (never the machine's own Redis)."""
    server = RedisProcess()
    server.start()
    yield server
    server.close()


@pytest.fixture
def redis_client(redis_server: RedisProcess) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture
def queue_name(request: pytest.FixtureRequest) -> str:
    """A queue name no other test uses, so tests share one server without flushing it."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"q{next(_names)}-{request.node.name[:40]}")


# --- Brokers -----------------------------------------------------------------------------------


@pytest.fixture
def broker_factory(
    redis_server: RedisProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[BrokerFactory]:
    """Starts real broker subprocesses: `broker_factory(lease_seconds=2, ...)`.

    Keyword arguments are broker settings (names from broker_service/config.py), passed as
    flags. Brokers of one test share a key namespace of their own (replicas of one service), on
    the session's Redis unless `redis_url=` says otherwise. Each is SIGKILLed at teardown.
    """
    brokers: list[BrokerProcess] = []
    namespace = f"t{next(_namespaces)}"

    def make(*, start: bool = True, **settings: object) -> BrokerProcess:
        settings.setdefault("namespace", namespace)
        log_path = tmp_path / f"broker{len(brokers)}.log"
        broker = BrokerProcess(redis_url=redis_server.url, log_path=log_path, settings=settings)
        brokers.append(broker)
        _remember_log(request, f"broker {broker.address}", log_path)
        if start:
            broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.close()


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> BrokerProcess:
    """A broker of this test alone, with default settings."""
    return broker_factory()


@pytest.fixture(scope="session")
def shared_broker(
    redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerProcess]:
    """One broker for the whole session (namespace "shared"), for tests that never stop it."""
    log_path = tmp_path_factory.mktemp("shared-broker") / "broker.log"
    broker = BrokerProcess(redis_url=redis_server.url, log_path=log_path, settings={"namespace": "shared"})
    _shared.append(broker)
    broker.start()
    yield broker
    _shared.clear()
    broker.close()


# --- Workers -----------------------------------------------------------------------------------


@pytest.fixture
def worker_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[WorkerFactory]:
    """Starts real worker processes: `worker_factory("tests.x:worker", "--concurrency", "4", broker=b)`.

    `target` is `module:attribute` (a Worker); test modules under tests/ import as `tests.…`.
    Extra positional arguments go to the worker command line; `env` adds environment
    variables. Each worker is SIGKILLed (with its process group) at teardown.
    """
    workers: list[WorkerProcess] = []

    def make(
        target: str,
        *args: str,
        broker: BrokerProcess | str,
        env: dict[str, str] | None = None,
        start: bool = True,
    ) -> WorkerProcess:
        address = broker.address if isinstance(broker, BrokerProcess) else broker
        log_path = tmp_path / f"worker{len(workers)}.log"
        worker = WorkerProcess(target, *args, broker=address, log_path=log_path, env=env)
        workers.append(worker)
        _remember_log(request, f"worker {target}", log_path)
        if start:
            worker.start()
        return worker

    yield make
    for worker in workers:
        worker.close()


# --- Clients -----------------------------------------------------------------------------------


@pytest.fixture
def client(broker: BrokerProcess) -> Iterator[Client]:
    """A sync client_sdk.Client of this test's broker."""
    from client_sdk import Client

    with Client(broker.address) as c:
        yield c


@pytest.fixture
def async_client(broker: BrokerProcess) -> Callable[..., AsyncClient]:
    """Builds client_sdk.AsyncClient instances for this test's broker.

    An AsyncClient belongs to the event loop that uses it, so build it inside the coroutine:
    `async with async_client() as c: ...`, run with `tests.helpers.run_async(main())`.
    Keyword arguments go to AsyncClient.
    """
    from client_sdk import AsyncClient

    make: Callable[..., Any] = functools.partial(AsyncClient, broker.address)
    return make

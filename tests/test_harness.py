"""The test harness itself: real brokers and workers start, stop, fail loudly and never outlive a run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from client_sdk import AsyncClient, Client, NotFoundError
from tests.helpers import (
    REPO_ROOT,
    BrokerFactory,
    BrokerProcess,
    WorkerExitedError,
    WorkerFactory,
    eventually,
    run_async,
)

EXAMPLE_WORKER = "worker_sdk.examples:worker"


def test_broker_fixture_is_serving_with_metrics(broker: BrokerProcess) -> None:
    assert broker.alive
    assert broker.metric("conveyor_workers_connected") == 0


def test_broker_stops_with_exit_code_zero_and_restarts_on_the_same_address(
    broker_factory: BrokerFactory,
) -> None:
    broker = broker_factory(lease_seconds=5)
    assert "--lease-seconds" in broker.argv()
    address = broker.address
    assert broker.stop() == 0
    broker.start()
    assert broker.address == address
    broker.restart(hard=True)
    assert broker.alive


def test_a_broker_that_cannot_start_fails_at_once_with_its_log(broker_factory: BrokerFactory) -> None:
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="broker log tail"):
        broker_factory(redis_url="redis://127.0.0.1:1/0", redis_timeout_seconds=1)
    assert time.monotonic() - started < 15


def test_a_worker_that_cannot_start_fails_at_once_with_its_log(
    broker: BrokerProcess, worker_factory: WorkerFactory
) -> None:
    worker = worker_factory("tests.no_such_module:worker", broker=broker)
    started = time.monotonic()
    with pytest.raises(WorkerExitedError, match="no_such_module"):
        broker.wait_for_workers(1, timeout=15, watch=[worker])
    assert time.monotonic() - started < 10


def test_example_worker_connects_and_drains_on_sigterm(
    broker: BrokerProcess, worker_factory: WorkerFactory
) -> None:
    worker = worker_factory(EXAMPLE_WORKER, broker=broker)
    broker.wait_for_workers(1, watch=[worker])
    assert worker.terminate(timeout=30) == 0
    eventually(lambda: broker.metric("conveyor_workers_connected") == 0)


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status  # killed, waiting to be reaped by init


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_spawned_processes_die_with_the_test_process(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from tests.helpers import spawn\n"
        "child = spawn([sys.executable, '-c', 'import time; time.sleep(60)'],\n"
        f"              log_path=Path({str(tmp_path)!r}) / 'c.log')\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    ) as parent:
        try:
            assert parent.stdout is not None
            child_pid = int(parent.stdout.readline())
            assert not _gone(child_pid)
            parent.send_signal(signal.SIGKILL)
            parent.wait(10)
            eventually(lambda: _gone(child_pid), timeout=10)
        finally:
            parent.kill()


def test_client_fixtures_reach_the_test_broker(client: Client, async_client: Callable[..., AsyncClient]) -> None:
    unknown = "01M8510PZ1EAP21ZAP6A77RHAW@default"
    with pytest.raises(NotFoundError):
        client.get(unknown)

    async def ask() -> None:
        async with async_client() as aclient:
            with pytest.raises(NotFoundError):
                await aclient.get(unknown)

    run_async(ask(), timeout=10)

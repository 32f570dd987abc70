"""The broker as a process: a second one on a busy port fails fast, and the first keeps serving;
broker and worker run on either event loop."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from client_sdk import Client, TaskState
from tests.helpers import BrokerProcess, WorkerFactory, free_port, kill_group, spawn
from tests.integration.conftest import TASKS_WORKER, MakeBroker
from tests.redis_process import RedisProcess
from worker_sdk.examples import add

EXIT_WITHIN = 4.0


def _run_second_broker(first: BrokerProcess, redis_server: RedisProcess, log_path: Path,
                       **settings: object) -> tuple[int | None, float]:
    """Starts another broker of the same service; returns its exit code (None if still running) and the time."""
    second = BrokerProcess(redis_url=redis_server.url, log_path=log_path,
                           settings={"namespace": first.namespace, **settings})
    started = time.monotonic()
    proc = spawn(second.argv(), log_path=log_path)
    try:
        code = proc.wait(EXIT_WITHIN)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        kill_group(proc)
    return code, time.monotonic() - started


def test_a_second_broker_on_a_busy_grpc_port_exits_non_zero_within_seconds(
    fast_broker: BrokerProcess, redis_server: RedisProcess, tmp_path: Path, queue_name: str
) -> None:
    log_path = tmp_path / "second.log"
    code, elapsed = _run_second_broker(fast_broker, redis_server, log_path,
                                       listen=fast_broker.address, metrics_port=free_port())
    assert code is not None, f"still running after {EXIT_WITHIN}s"
    assert code != 0
    assert elapsed < EXIT_WITHIN
    assert "cannot listen on " + fast_broker.address in log_path.read_text()

    # The first broker still owns the port and answers.
    assert fast_broker.alive
    with Client(fast_broker.address) as client:
        handle = client.enqueue(add.with_options(queue=queue_name), 1, 1)
        assert handle.get().state is TaskState.QUEUED


def test_a_second_broker_on_a_busy_metrics_port_exits_non_zero_within_seconds(
    fast_broker: BrokerProcess, redis_server: RedisProcess, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, elapsed = _run_second_broker(fast_broker, redis_server, tmp_path / "second.log",
                                           listen=f"127.0.0.1:{free_port()}",
                                           metrics_port=taken.getsockname()[1])
    assert code is not None, f"still running after {EXIT_WITHIN}s"
    assert code != 0
    assert elapsed < EXIT_WITHIN


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_broker_and_worker_run_a_task_on_either_event_loop(
        make_broker: MakeBroker, worker_factory: WorkerFactory, queue_name: str, event_loop: str) -> None:
    broker = make_broker(event_loop=event_loop)
    worker = worker_factory(TASKS_WORKER, "--queues", queue_name, "--event-loop", event_loop, broker=broker)
    with Client(broker.address) as client:
        handle = client.enqueue(add.with_options(queue=queue_name), 2, 3)
        assert handle.result(timeout=15) == 5
    assert f"event loop: {event_loop}" in broker.log()
    assert f"event_loop={event_loop}" in worker.log

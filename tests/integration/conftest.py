"""Integration fixtures: the whole path SDK → gRPC → broker → Redis, with real worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.helpers import BrokerProcess, WorkerFactory, WorkerProcess

if TYPE_CHECKING:
    from client_sdk import Client

# The Worker that runs the integration suite's example tasks (tests/integration/tasks.py).
TASKS_WORKER = "tests.integration.tasks:worker"


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

"""The broker is SIGKILLed between a workflow parent's completion and its child's release: the
reconciler of the brokers that come next releases the child, and it runs exactly once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from client_sdk import Client, TaskState, WorkflowState, chain
from tests.faults.conftest import FaultWorkerFactory
from tests.faults.journal import executions
from tests.faults.tasks import record
from tests.helpers import BrokerProcess, eventually
from tests.redis_process import RedisProcess


def test_a_child_left_unreleased_by_a_killed_broker_runs_exactly_once(
    fault_broker: Callable[..., BrokerProcess], fault_worker: FaultWorkerFactory, queue_name: str,
    journal_path: Path, redis_server: RedisProcess,
) -> None:
    # The window is held open: this broker never advances workflows itself (no fast path, and its
    # reconciler's next pass is an hour away), so a completed parent stays in the outbox.
    doomed = fault_broker(workflow_fast_path=0, workflow_reconcile_seconds=3600)
    worker = fault_worker(doomed)
    step = record.with_options(queue=queue_name)
    with Client(doomed.address) as client:
        handle = client.submit_workflow(chain(step.si(str(journal_path), tag="parent"),
                                              step.si(str(journal_path), tag="child")))
        parent_id, child_id = (n.task_id for n in client.get_workflow(handle.id).nodes)
    parent_ulid = parent_id.partition("@")[0]
    store = redis.Redis.from_url(redis_server.url)
    outbox = f"{{{doomed.namespace}:{queue_name}}}:wf_outbox"

    def parent_done_child_pending() -> bool:
        members: Any = store.zrange(outbox, 0, -1)
        return [m.decode() for m in members] == [parent_ulid]

    eventually(parent_done_child_pending, timeout=15)
    with Client(doomed.address) as client:
        assert client.get(parent_id).state is TaskState.SUCCEEDED
        assert client.get(child_id).state is TaskState.PENDING
    doomed.kill()
    worker.kill()

    # Two replicas come up at once and both reconcile: the child is still released only once.
    survivors = [fault_broker(workflow_reconcile_seconds=0.3) for _ in range(2)]
    fault_worker(survivors[0])
    with Client(survivors[1].address) as client:
        info = client.wait_workflow(handle.id, timeout=20)
        assert info.state is WorkflowState.SUCCEEDED
        assert [n.state for n in info.nodes] == [TaskState.SUCCEEDED, TaskState.SUCCEEDED]
        assert client.get(child_id).attempt == 1
    assert executions(journal_path) == {parent_id: 1, child_id: 1}
    assert store.zcard(outbox) == 0
    repairs = sum(b.metric("conveyor_workflow_repairs_total", kind="outbox") for b in survivors)
    assert repairs >= 1
    store.close()


def test_a_chain_survives_broker_kills_with_the_fast_path_on_and_each_step_runs_once(
    fault_broker: Callable[..., BrokerProcess], fault_worker: FaultWorkerFactory, queue_name: str,
    journal_path: Path,
) -> None:
    # Leases outlast a restart, so a step running across a kill is re-claimed, not run again;
    # whatever the kills interrupt between a step's end and the next one's release is repaired.
    broker = fault_broker(lease_seconds=8, workflow_reconcile_seconds=0.3, workflow_pending_grace_seconds=1)
    worker = fault_worker(broker)
    step = record.with_options(queue=queue_name)
    steps = 12
    with Client(broker.address) as client:
        handle = client.submit_workflow(chain(*(step.si(str(journal_path), 0.15, tag=f"s{i}") for i in range(steps))))
        for done in (3, 7):
            eventually(lambda done=done: len(executions(journal_path)) >= done, timeout=20)
            broker.restart(hard=True)
            broker.wait_for_workers(1, timeout=10, watch=[worker])
        info = client.wait_workflow(handle.id, timeout=40)

    assert info.state is WorkflowState.SUCCEEDED
    assert executions(journal_path) == {n.task_id: 1 for n in info.nodes}

"""Helpers of the workflow store tests: write a workflow graph, read its record, make nodes run."""

from __future__ import annotations

from typing import Any

from broker_service.domain import Lease, NewTask, WorkflowNodeRecord, make_task_id, new_ulid
from broker_service.store.keys import WorkflowKeys
from tests.store.conftest import StoreHarness
from tests.store.helpers import NAMESPACE


def graph(harness: StoreHarness, edges: dict[str, tuple[str, ...]]) -> tuple[str, dict[str, str]]:
    """Writes a workflow whose nodes (name -> parents) live in the harness's queue, PENDING.

    Returns (workflow id, {node: ulid}).
    """
    harness.run(harness.store.register_queues([harness.queue]))
    workflow_id = new_ulid()
    ulids = {name: new_ulid() for name in edges}
    children: dict[str, list[str]] = {name: [] for name in edges}
    for name, parents in edges.items():
        for parent in parents:
            children[parent].append(name)
    tasks = [NewTask(ulid=ulids[name], queue=harness.queue, name="tests.work", workflow_id=workflow_id,
                     workflow_node=name, parent_ids=tuple(make_task_id(ulids[p], harness.queue) for p in parents))
             for name, parents in edges.items()]
    harness.enqueue(*tasks)
    nodes = [WorkflowNodeRecord(name=name, task_id=make_task_id(ulids[name], harness.queue), parents=parents,
                                children=tuple(children[name])) for name, parents in edges.items()]
    assert harness.run(harness.store.create_workflow(workflow_id, "test", 60_000, nodes))
    return workflow_id, ulids


def record(harness: StoreHarness, workflow_id: str) -> dict[str, str]:
    raw: Any = harness.redis.hgetall(WorkflowKeys(NAMESPACE, workflow_id).record)
    return {k.decode(): v.decode() for k, v in raw.items()}


def expiry(harness: StoreHarness, workflow_id: str) -> int:
    return int(harness.redis.pexpiretime(WorkflowKeys(NAMESPACE, workflow_id).record))  # type: ignore[arg-type]


def run_node(harness: StoreHarness, ulid: str) -> Lease:
    """Releases a pending node and leases it."""
    assert harness.run(harness.store.unblock(harness.queue, [(ulid, b"")])) == ["queued"]
    [leased] = harness.lease(1)
    assert leased.ulid == ulid
    return Lease(leased.ulid, leased.lease_token)


def task_id(harness: StoreHarness, ulid: str) -> str:
    return make_task_id(ulid, harness.queue)

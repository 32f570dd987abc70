"""The workflow engine against a real server: what a crash at each step of a submit or an advance
leaves behind, and how one reconciler pass repairs it."""

from __future__ import annotations

from broker_service.domain import Completion, TaskState, WorkflowNodeSpec, WorkflowState
from broker_service.metrics import Metrics
from broker_service.workflows import Workflows, node_ulid
from tests.store.conftest import StoreHarness
from tests.store.helpers import new_task
from tests.store.workflow_helpers import graph, run_node


def _engine(harness: StoreHarness) -> Workflows:
    return Workflows(harness.store, Metrics(), fast_path=False, outbox_grace_ms=0, pending_grace_ms=0)


def _state(harness: StoreHarness, ulid: str) -> TaskState:
    return harness.run(harness.store.get(harness.queue, ulid)).state


def test_submit_writes_every_node_then_the_record_then_releases_the_roots(harness: StoreHarness) -> None:
    engine = _engine(harness)
    nodes = [WorkflowNodeSpec("a", new_task(harness.queue)), WorkflowNodeSpec("b", new_task(harness.queue), ("a",))]

    submitted = harness.run(engine.submit("etl", nodes))
    again = harness.run(engine.submit("etl", nodes, idempotency_key="k"))
    repeat = harness.run(engine.submit("etl", nodes, idempotency_key="k"))

    a, b = (node_ulid(submitted.workflow_id, i) for i in range(2))
    assert submitted.task_ids == {"a": f"{a}@{harness.queue}", "b": f"{b}@{harness.queue}"}
    assert (_state(harness, a), _state(harness, b)) == (TaskState.QUEUED, TaskState.PENDING)
    record = harness.run(harness.store.get(harness.queue, b))
    assert (record.workflow_id, record.workflow_node, record.parent_ids) == (
        submitted.workflow_id, "b", (f"{a}@{harness.queue}",))
    assert (repeat.workflow_id, repeat.duplicate, again.duplicate) == (again.workflow_id, True, False)


def test_nodes_whose_workflow_record_never_appeared_are_cancelled_as_aborted(harness: StoreHarness) -> None:
    orphan = new_task(harness.queue, workflow_id="01HAAAAAAAAAAAAAAAAAAAAAAA", workflow_node="a")
    harness.enqueue(orphan)
    harness.run(harness.store.register_queues([harness.queue]))

    assert harness.run(_engine(harness).reconcile([harness.queue])) == 1

    record = harness.run(harness.store.get(harness.queue, orphan.ulid))
    assert (record.state, record.reason) == (TaskState.CANCELLED, "workflow_aborted")


def test_roots_left_pending_after_the_commit_point_are_released(harness: StoreHarness) -> None:
    _, ulids = graph(harness, {"a": (), "b": ("a",)})  # written, roots never released

    assert harness.run(_engine(harness).reconcile([harness.queue])) == 1

    assert (_state(harness, ulids["a"]), _state(harness, ulids["b"])) == (TaskState.QUEUED, TaskState.PENDING)


def test_a_completion_left_in_the_outbox_advances_the_workflow_once(harness: StoreHarness) -> None:
    engine = _engine(harness)
    workflow_id, ulids = graph(harness, {"a": (), "b": ("a",)})
    lease = run_node(harness, ulids["a"])
    harness.run(harness.store.complete(harness.queue, [Completion(lease.ulid, lease.token, b"41", "")]))

    harness.run(engine.reconcile([harness.queue]))
    harness.run(engine.reconcile([harness.queue]))

    assert _state(harness, ulids["b"]) is TaskState.QUEUED
    [child] = harness.lease(1)
    assert [p.payload for p in child.parent_results] == [] and child.ulid == ulids["b"]
    harness.run(harness.store.complete(harness.queue, [Completion(child.ulid, child.lease_token, b"", "")]))
    harness.run(engine.reconcile([harness.queue]))
    assert harness.run(harness.store.get_workflow(workflow_id)).state is WorkflowState.SUCCEEDED
    assert harness.run(harness.store.outbox(harness.queue, None, 10)) == []


def test_a_child_settled_but_not_released_before_a_crash_is_released_with_its_parents_result(
    harness: StoreHarness,
) -> None:
    engine = _engine(harness)
    workflow_id, ulids = graph(harness, {"a": (), "b": ("a",)})
    harness.redis.hset(harness.store.queue_keys(harness.queue).task(ulids["b"]), "rpass", "2")
    lease = run_node(harness, ulids["a"])
    harness.run(harness.store.complete(harness.queue, [Completion(lease.ulid, lease.token, b"41", "")]))
    # The crash: the node was settled and its outbox entry dropped, the child never released.
    harness.run(harness.store.settle_node(workflow_id, "a", TaskState.SUCCEEDED))
    harness.run(harness.store.outbox_done(harness.queue, [ulids["a"]]))

    assert harness.run(engine.reconcile([harness.queue])) == 1

    [child] = harness.lease(1)
    assert [(p.node, p.payload) for p in child.parent_results] == [("a", b"41")]
    assert child.result_passing == 2


def test_a_failed_parent_cancels_the_pending_children_the_crash_left(harness: StoreHarness) -> None:
    workflow_id, ulids = graph(harness, {"a": (), "b": ("a",)})
    harness.run(harness.store.settle_node(workflow_id, "a", TaskState.FAILED))

    harness.run(_engine(harness).reconcile([harness.queue]))

    record = harness.run(harness.store.get(harness.queue, ulids["b"]))
    assert (record.state, record.reason) == (TaskState.CANCELLED, "parent 'a' failed")

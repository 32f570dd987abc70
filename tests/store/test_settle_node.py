"""settle_node.lua: a node's end is recorded once; it answers the children to release, the
descendants to cancel, and ends the workflow when no node is left."""

from __future__ import annotations

from broker_service.domain import Settlement, TaskState, WorkflowState
from tests.store.conftest import StoreHarness
from tests.store.helpers import redis_now_ms
from tests.store.workflow_helpers import expiry, graph, record, task_id


def _settle(harness: StoreHarness, workflow_id: str, node: str, state: TaskState) -> Settlement:
    return harness.run(harness.store.settle_node(workflow_id, node, state))


def test_a_succeeded_parent_releases_its_only_child(harness: StoreHarness) -> None:
    workflow_id, ulids = graph(harness, {"a": (), "b": ("a",)})

    settled = _settle(harness, workflow_id, "a", TaskState.SUCCEEDED)

    assert settled == Settlement(state=WorkflowState.RUNNING, ended=False, ready=(task_id(harness, ulids["b"]),))
    fields = record(harness, workflow_id)
    assert (fields["s/a"], fields["left"]) == ("succeeded", "1")


def test_settling_again_records_nothing_and_answers_the_same(harness: StoreHarness) -> None:
    workflow_id, _ = graph(harness, {"a": (), "b": ("a",)})
    first = _settle(harness, workflow_id, "a", TaskState.SUCCEEDED)
    before = record(harness, workflow_id)

    again = _settle(harness, workflow_id, "a", TaskState.SUCCEEDED)

    assert again == first
    assert record(harness, workflow_id) == before


def test_a_child_of_two_parents_is_ready_once_both_succeeded(harness: StoreHarness) -> None:
    workflow_id, ulids = graph(harness, {"a": (), "b": (), "join": ("a", "b")})

    assert _settle(harness, workflow_id, "a", TaskState.SUCCEEDED).ready == ()
    assert _settle(harness, workflow_id, "b", TaskState.SUCCEEDED).ready == (task_id(harness, ulids["join"]),)


def test_a_failed_node_cancels_every_descendant_with_the_reason(harness: StoreHarness) -> None:
    workflow_id, ulids = graph(harness, {"a": (), "b": ("a",), "c": ("b",), "side": ()})

    settled = _settle(harness, workflow_id, "a", TaskState.FAILED)

    assert settled.state is WorkflowState.RUNNING and settled.ready == ()
    assert settled.cancel == ((task_id(harness, ulids["b"]), "parent 'a' failed"),
                              (task_id(harness, ulids["c"]), "ancestor 'a' failed"))
    assert record(harness, workflow_id)["reason"] == "node 'a' failed"


def test_the_last_node_ends_the_workflow_failed_once_and_the_record_expires(harness: StoreHarness) -> None:
    workflow_id, _ = graph(harness, {"a": (), "b": ("a",)})
    _settle(harness, workflow_id, "a", TaskState.EXPIRED)

    last = _settle(harness, workflow_id, "b", TaskState.CANCELLED)
    again = _settle(harness, workflow_id, "b", TaskState.CANCELLED)

    assert (last.state, last.ended) == (WorkflowState.FAILED, True)
    assert (again.state, again.ended) == (WorkflowState.FAILED, False)
    fields = record(harness, workflow_id)
    assert (fields["state"], fields["reason"], fields["left"]) == ("failed", "node 'a' expired", "0")
    assert expiry(harness, workflow_id) == int(fields["finished"]) + 60_000
    assert abs(int(fields["finished"]) - redis_now_ms(harness.redis)) < 5_000


def test_a_workflow_whose_nodes_all_succeeded_ends_succeeded(harness: StoreHarness) -> None:
    workflow_id, _ = graph(harness, {"a": (), "b": ()})
    _settle(harness, workflow_id, "a", TaskState.SUCCEEDED)

    last = _settle(harness, workflow_id, "b", TaskState.SUCCEEDED)

    assert (last.state, last.ended) == (WorkflowState.SUCCEEDED, True)
    assert "reason" not in record(harness, workflow_id)


def test_settling_a_node_of_a_gone_workflow_answers_no_state(harness: StoreHarness) -> None:
    assert _settle(harness, "01HAAAAAAAAAAAAAAAAAAAAAAA", "a", TaskState.SUCCEEDED) == Settlement(state=None)

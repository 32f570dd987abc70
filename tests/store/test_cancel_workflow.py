"""cancel_workflow.lua: a running workflow ends CANCELLED and answers its unsettled nodes."""

from __future__ import annotations

import pytest

from broker_service.domain import TaskState, WorkflowNotFoundError, WorkflowState, WorkflowTerminalError
from tests.store.conftest import StoreHarness
from tests.store.workflow_helpers import expiry, graph, record, task_id


def test_cancel_workflow_answers_the_unsettled_nodes_and_ends_cancelled(harness: StoreHarness) -> None:
    workflow_id, ulids = graph(harness, {"a": (), "b": ("a",), "c": ("a",)})
    harness.run(harness.store.settle_node(workflow_id, "a", TaskState.SUCCEEDED))

    open_nodes = harness.run(harness.store.cancel_workflow(workflow_id, "not needed"))

    assert open_nodes == [task_id(harness, ulids["b"]), task_id(harness, ulids["c"])]
    fields = record(harness, workflow_id)
    assert (fields["state"], fields["reason"]) == ("cancelled", "not needed")
    assert expiry(harness, workflow_id) == int(fields["finished"]) + 60_000


def test_nodes_ending_after_a_cancel_release_nothing(harness: StoreHarness) -> None:
    workflow_id, _ = graph(harness, {"a": (), "b": ("a",)})
    harness.run(harness.store.cancel_workflow(workflow_id, ""))

    settled = harness.run(harness.store.settle_node(workflow_id, "a", TaskState.SUCCEEDED))

    assert (settled.state, settled.ready, settled.ended) == (WorkflowState.CANCELLED, (), False)
    assert record(harness, workflow_id)["reason"] == "cancelled"


def test_cancel_of_a_finished_or_unknown_workflow_is_refused(harness: StoreHarness) -> None:
    workflow_id, _ = graph(harness, {"a": ()})
    harness.run(harness.store.settle_node(workflow_id, "a", TaskState.SUCCEEDED))

    with pytest.raises(WorkflowTerminalError):
        harness.run(harness.store.cancel_workflow(workflow_id, ""))
    with pytest.raises(WorkflowNotFoundError):
        harness.run(harness.store.cancel_workflow("01HAAAAAAAAAAAAAAAAAAAAAAA", ""))

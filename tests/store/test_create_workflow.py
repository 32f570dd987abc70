"""create_workflow.lua: the record holds the graph; writing it again changes nothing."""

from __future__ import annotations

from broker_service.domain import WorkflowNodeRecord, WorkflowState, new_ulid
from tests.store.conftest import StoreHarness
from tests.store.workflow_helpers import expiry, graph, record


def test_create_workflow_writes_the_graph_and_every_node_unsettled(harness: StoreHarness) -> None:
    workflow_id, ulids = graph(harness, {"fetch": (), "parse": ("fetch",), "store": ("parse",)})

    fields = record(harness, workflow_id)
    q = harness.queue
    assert {k: v for k, v in fields.items() if k != "created"} == {
        "name": "test", "state": "running", "ttl": "60000", "left": "3", "nodes": "fetch parse store",
        "t/fetch": f"{ulids['fetch']}@{q}", "t/parse": f"{ulids['parse']}@{q}", "t/store": f"{ulids['store']}@{q}",
        "c/fetch": "parse", "p/parse": "fetch", "c/parse": "store", "p/store": "parse", "w/parse": "1",
        "w/store": "1"}
    assert expiry(harness, workflow_id) == -1
    read = harness.run(harness.store.get_workflow(workflow_id))
    assert read.state is WorkflowState.RUNNING
    assert [n.name for n in read.nodes] == ["fetch", "parse", "store"]
    assert read.output_nodes == ["store"]
    assert all(n.settled is None for n in read.nodes)


def test_create_workflow_again_leaves_the_record_alone(harness: StoreHarness) -> None:
    workflow_id, _ = graph(harness, {"a": ()})
    before = record(harness, workflow_id)

    again = harness.run(harness.store.create_workflow(
        workflow_id, "other", 1, [WorkflowNodeRecord("b", f"{new_ulid()}@x", (), ())]))

    assert again is False
    assert record(harness, workflow_id) == before


def test_every_workflow_node_is_written_pending_roots_too(harness: StoreHarness) -> None:
    _, ulids = graph(harness, {"root": (), "child": ("root",)})

    dump = harness.dump()
    assert dump["indexes"]["pending"] == sorted(ulids.values(), key=list(ulids.values()).index)
    assert dump["indexes"]["queued"] == []
    assert {dump["tasks"][u]["state"] for u in ulids.values()} == {"pending"}

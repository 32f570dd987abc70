"""The broker's checks of a submitted workflow, before anything is stored (no sockets)."""

from __future__ import annotations

import pytest
from conveyor.v1 import task_service_pb2 as ts
from conveyor.v1 import workflow_service_pb2 as wf_pb

from broker_service.api.errors import ApiError
from broker_service.api.validate import Limits
from broker_service.api.workflows import find_cycle, submit_request
from broker_service.domain import NewTask, WorkflowNodeSpec

LIMITS = Limits(max_payload_bytes=1024, max_batch_size=10, lease_ms=30_000, result_ttl_ms=60_000, max_attempts=3)


def _spec(name: str, *parents: str) -> WorkflowNodeSpec:
    return WorkflowNodeSpec(name, NewTask(ulid="", queue="q", name="t"), parents)


def _request(*nodes: tuple[str, tuple[str, ...], int]) -> wf_pb.SubmitWorkflowRequest:
    return wf_pb.SubmitWorkflowRequest(nodes=[
        wf_pb.WorkflowNodeSpec(name=name, task=ts.TaskSpec(queue="q", name="t"), parents=parents, result_passing=rp)
        for name, parents, rp in nodes])


def test_a_diamond_and_a_long_chain_have_no_cycle() -> None:
    assert find_cycle([_spec("a"), _spec("b", "a"), _spec("c", "a"), _spec("d", "b", "c")]) == []
    chain = [_spec("n0")] + [_spec(f"n{i}", f"n{i - 1}") for i in range(1, 5000)]
    assert find_cycle(chain) == []


def test_a_cycle_is_named_in_dependency_order() -> None:
    cycle = find_cycle([_spec("root"), _spec("a", "root", "c"), _spec("b", "a"), _spec("c", "b")])
    assert sorted(cycle) == ["a", "b", "c"]
    assert cycle[(cycle.index("a") + 1) % 3] == "b"  # a runs before b, b before c, c before a


def test_a_valid_request_becomes_node_specs_with_their_result_passing() -> None:
    specs = submit_request(_request(("a", (), 0), ("b", ("a",), 2), ("c", ("a", "b"), 3), ("d", ("c",), 1)),
                           LIMITS, 10, 0)

    assert [(s.name, s.parents, s.task.result_passing) for s in specs] == [
        ("a", (), 0), ("b", ("a",), 2), ("c", ("a", "b"), 3), ("d", ("c",), 0)]
    assert specs[0].task.lease_ms == 30_000


@pytest.mark.parametrize(("request_", "field"), [
    (_request(("a", (), 0), ("b", ("a", "a"), 0)), "nodes[1].parents"),
    (_request(("a", (), 9)), "nodes[0].result_passing"),
    (_request(("a", (), 2)), "nodes[0].result_passing"),
    (_request(*[(f"n{i}", (), 0) for i in range(11)]), "nodes"),
])
def test_bad_requests_name_the_field(request_: wf_pb.SubmitWorkflowRequest, field: str) -> None:
    with pytest.raises(ApiError) as caught:
        submit_request(request_, LIMITS, 10, 0)
    assert caught.value.message.startswith(f"{field}: ")

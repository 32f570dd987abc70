"""Workflow builders: how chains, groups, chords and DAGs become nodes, and how results come back."""

from __future__ import annotations

from typing import Any

import pytest
from conveyor.v1 import task_pb2
from conveyor.v1 import workflow_service_pb2 as wf_pb

from client_sdk import DAG, WorkflowFailedError, WorkflowState, chain, chord, group, signature, task
from client_sdk._workflow import outcome, submit_request, workflow_info

NONE, FIRST, LIST = task_pb2.RESULT_PASSING_NONE, task_pb2.RESULT_PASSING_FIRST, task_pb2.RESULT_PASSING_LIST


@task(queue="etl")
def fetch(url: str) -> str:
    """Fetches."""
    return url


@task
def parse(text: str, strict: bool = False) -> list[str]:
    """Parses."""
    return [text]


@task
def merge(parts: list[Any]) -> int:
    """Merges."""
    return len(parts)


def _graph(flow: Any) -> list[tuple[str, tuple[str, ...], int]]:
    request, _ = submit_request(flow)
    return [(n.name, tuple(n.parents), n.result_passing) for n in request.nodes]


def test_a_chain_hands_each_step_the_previous_result_first_unless_immutable() -> None:
    flow = chain(fetch.s("u"), parse.s(strict=True), merge.si([1]), signature("app.store"))

    assert _graph(flow) == [("0:fetch", (), NONE), ("1:parse", ("0:fetch",), FIRST),
                            ("2:merge", ("1:parse",), NONE), ("3:store", ("2:merge",), FIRST)]
    request, _ = submit_request(flow)
    assert request.nodes[0].task.queue == "etl" and request.nodes[3].task.queue == "default"


def test_a_chord_callback_gets_the_list_even_of_a_one_member_group() -> None:
    assert _graph(chord(group(fetch.s("a")), merge.s())) == [("0:fetch", (), NONE), ("1:merge", ("0:fetch",), LIST)]
    assert _graph(chain(group(fetch.s("a")), merge.s())) == [("0:fetch", (), NONE), ("1:merge", ("0:fetch",), LIST)]


def test_a_group_inside_a_chain_fans_out_and_back_in() -> None:
    flow = chain(fetch.s("u"), group(parse.s(), parse.s()), merge.s())

    assert _graph(flow) == [("0:fetch", (), NONE), ("1:parse", ("0:fetch",), FIRST), ("2:parse", ("0:fetch",), FIRST),
                            ("3:merge", ("1:parse", "2:parse"), LIST)]


def test_a_dag_keeps_its_names_and_picks_passing_by_parent_count() -> None:
    dag = DAG()
    dag.add("a", fetch.s("a"))
    dag.add("b", fetch.s("b"))
    dag.add("one", parse.s(), parents=["a"])
    dag.add("both", merge.s(), parents=["a", "b"])
    dag.add("forced", merge.s(), parents=["b"], passing="list")

    assert _graph(dag) == [("a", (), NONE), ("b", (), NONE), ("one", ("a",), FIRST), ("both", ("a", "b"), LIST),
                           ("forced", ("b",), LIST)]


def test_dag_mistakes_are_caught_before_submitting() -> None:
    dag = DAG()
    dag.add("a", fetch.s("a"))
    with pytest.raises(ValueError, match="duplicate"):
        dag.add("a", fetch.s("a"))
    with pytest.raises(ValueError, match="unknown parent"):
        dag.add("b", parse.s(), parents=["nope"])
    with pytest.raises(ValueError, match="node name"):
        dag.add("bad name", parse.s())
    with pytest.raises(ValueError, match="whole workflow"):
        submit_request(chain(fetch.s("x"), dag))
    with pytest.raises(ValueError):
        chain()


def _message(state: WorkflowState, results: dict[str, bytes], outputs: list[str]) -> wf_pb.Workflow:
    nodes = [wf_pb.WorkflowNode(name=name, task_id=f"01HAAAAAAAAAAAAAAAAAAAAA{i:02d}@q", state=4,
                                task=task_pb2.Task(id=f"01HAAAAAAAAAAAAAAAAAAAAA{i:02d}@q", state=4, result=result,
                                                   result_content_type="application/json"))
             for i, (name, result) in enumerate(results.items())]
    return wf_pb.Workflow(id="01HAAAAAAAAAAAAAAAAAAAAAAA", state=int(state), nodes=nodes, output_nodes=outputs,
                          reason="node 'x' failed" if state is WorkflowState.FAILED else "")


def test_results_are_assembled_in_the_shape_of_the_workflow() -> None:
    _, shape = submit_request(chain(fetch.s("u"), group(parse.s(), parse.s())))
    info = workflow_info(_message(WorkflowState.SUCCEEDED, {"0:fetch": b'"u"', "1:parse": b"[1]", "2:parse": b"[2]"},
                                  ["1:parse", "2:parse"]))

    assert outcome(info, shape) == [[1], [2]]
    assert outcome(info, None) == {"1:parse": [1], "2:parse": [2]}
    with pytest.raises(WorkflowFailedError, match="node 'x' failed"):
        outcome(workflow_info(_message(WorkflowState.FAILED, {"a": b"1"}, ["a"])), shape)

"""Workflows end to end: chains, groups, chords and DAGs run by real workers, results handed from
parents to children, failures cancelling dependents, cancels, streams and bad input."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from conveyor.v1 import task_service_pb2 as ts
from conveyor.v1 import workflow_service_pb2 as wf_pb
from conveyor.v1 import workflow_service_pb2_grpc as wf_grpc

from client_sdk import (
    DAG,
    AsyncClient,
    Client,
    FailedPreconditionError,
    NotFoundError,
    TaskState,
    WorkflowCancelledError,
    WorkflowFailedError,
    WorkflowState,
    chain,
    chord,
    group,
    signature,
)
from tests.helpers import BrokerProcess, eventually
from tests.integration.conftest import StartWorker
from tests.integration.tasks import total, wait_for_cancel
from worker_sdk.examples import add, reject, sleep_then_add


def test_a_chain_hands_each_result_to_the_next_step(
    fast_client: Client, start_worker: StartWorker, queue_name: str
) -> None:
    start_worker(queue_name)
    step = add.with_options(queue=queue_name)

    handle = fast_client.submit_workflow(chain(step.s(1, 2), step.s(10), step.s(100)), name="sums")

    assert handle.result(timeout=20) == 113
    info = handle.get()
    assert (info.state, info.name, info.reason) == (WorkflowState.SUCCEEDED, "sums", "")
    assert [n.state for n in info.nodes] == [TaskState.SUCCEEDED] * 3
    assert info.output_nodes == (info.nodes[2].name,)
    assert info.finished_at is not None and info.created_at is not None
    assert info.nodes[1].parents == (info.nodes[0].name,)
    second = fast_client.get(info.nodes[1].task_id)
    assert (second.workflow_id, second.workflow_node, second.parent_ids) == (
        handle.id, info.nodes[1].name, (info.nodes[0].task_id,))
    assert fast_client.get(info.nodes[1].task_id).result == b"13"
    assert handle.task_ids == {n.name: n.task_id for n in info.nodes}


def test_a_group_collects_its_results_in_order_and_a_chord_sums_them(
    fast_client: Client, start_worker: StartWorker, queue_name: str
) -> None:
    start_worker(queue_name)
    a = add.with_options(queue=queue_name)
    callback = total.with_options(queue=queue_name)

    grouped = fast_client.submit_workflow(group(a.s(i, i) for i in range(5)))
    chorded = fast_client.submit_workflow(chord(group(a.s(1, 1), a.s(2, 2), a.s(3, 3)), callback.s(extra=100)))

    assert grouped.result(timeout=20) == [0, 2, 4, 6, 8]
    assert chorded.result(timeout=20) == 112


def test_a_dag_node_with_two_parents_gets_both_results(
    fast_client: Client, start_worker: StartWorker, queue_name: str
) -> None:
    start_worker(queue_name)
    a = add.with_options(queue=queue_name)
    dag = DAG()
    dag.add("left", a.s(1, 2))
    dag.add("right", a.s(3, 4))
    dag.add("join", total.with_options(queue=queue_name).s(), parents=["left", "right"])
    dag.add("after", a.s(1000), parents=["join"])
    dag.add("side", a.si(5, 5), parents=["left"])

    handle = fast_client.submit_workflow(dag)

    assert handle.result(timeout=20) == {"after": 1010, "side": 10}
    info = handle.get()
    assert info.node("join").parents == ("left", "right")
    assert fast_client.get(info.node("join").task_id).result == b"10"


def test_a_chain_crosses_queues_served_by_different_workers(
    fast_client: Client, start_worker: StartWorker, queue_name: str
) -> None:
    other = f"{queue_name}-b"
    start_worker(queue_name)
    start_worker(other)

    handle = fast_client.submit_workflow(chain(add.with_options(queue=queue_name).s(1, 1),
                                               add.with_options(queue=other).s(2),
                                               signature(add.name, 3).with_options(queue=queue_name)))

    assert handle.result(timeout=20) == 7
    queues = [fast_client.get(n.task_id).queue for n in handle.get().nodes]
    assert queues == [queue_name, other, queue_name]


def test_a_failed_step_cancels_its_dependents_and_the_workflow_fails(
    fast_client: Client, start_worker: StartWorker, queue_name: str
) -> None:
    start_worker(queue_name)
    a = add.with_options(queue=queue_name)
    flow = chain(a.s(1, 1), reject.with_options(queue=queue_name).si("broken input"), a.s(5), a.s(6))

    handle = fast_client.submit_workflow(flow)

    with pytest.raises(WorkflowFailedError) as caught:
        handle.result(timeout=20)
    info = caught.value.info
    _, bad, child, grandchild = info.nodes
    assert info.state is WorkflowState.FAILED
    assert info.reason == f"node '{bad.name}' failed"
    assert [n.state for n in info.nodes] == [TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED,
                                             TaskState.CANCELLED]
    assert child.task is not None and child.task.reason == f"parent '{bad.name}' failed"
    assert grandchild.task is not None and grandchild.task.reason == f"ancestor '{bad.name}' failed"
    assert child.task.started_at is None


def test_cancelling_a_workflow_stops_its_running_node_and_cancels_the_rest(
    fast_client: Client, start_worker: StartWorker, queue_name: str, trace_file: Path
) -> None:
    start_worker(queue_name)
    flow = chain(wait_for_cancel.with_options(queue=queue_name).si(str(trace_file), 30.0),
                 add.with_options(queue=queue_name).s(1))
    handle = fast_client.submit_workflow(flow)
    eventually(lambda: trace_file.exists() and "started" in trace_file.read_text(), timeout=15)

    assert handle.cancel("changed my mind") is WorkflowState.CANCELLED

    with pytest.raises(WorkflowCancelledError):
        handle.result(timeout=15)
    eventually(lambda: [n.state for n in handle.get().nodes] == [TaskState.CANCELLED, TaskState.CANCELLED],
               timeout=15)
    info = handle.get()
    assert (info.state, info.reason) == (WorkflowState.CANCELLED, "changed my mind")
    assert info.nodes[1].task is not None and info.nodes[1].task.reason == "workflow cancelled"
    assert "saw cancel" in trace_file.read_text()
    with pytest.raises(FailedPreconditionError):
        handle.cancel()


def test_wait_workflow_streams_the_workflow_until_it_finishes(
    fast_broker: BrokerProcess, fast_client: Client, start_worker: StartWorker, queue_name: str
) -> None:
    slow = sleep_then_add.with_options(queue=queue_name)
    handle = fast_client.submit_workflow(chain(slow.s(1, 1, 0.5), add.with_options(queue=queue_name).s(1)))
    with grpc.insecure_channel(fast_broker.address) as channel:
        stream = wf_grpc.WorkflowServiceStub(channel).WaitWorkflow(
            wf_pb.WaitWorkflowRequest(workflow_id=handle.id), timeout=20)
        first = next(stream)
        assert first.workflow.state == WorkflowState.RUNNING
        assert [n.state for n in first.workflow.nodes] == [TaskState.QUEUED, TaskState.PENDING]
        start_worker(queue_name)
        rest = list(stream)
    assert rest[-1].workflow.state == WorkflowState.SUCCEEDED
    on_the_way = [[n.state for n in r.workflow.nodes] for r in rest[:-1]]
    assert [TaskState.RUNNING, TaskState.PENDING] in on_the_way
    assert handle.result(timeout=5) == 3


def test_a_repeated_submit_with_the_same_idempotency_key_answers_the_first_workflow(
    fast_client: Client, start_worker: StartWorker, queue_name: str
) -> None:
    flow = chain(add.with_options(queue=queue_name).s(2, 2), add.with_options(queue=queue_name).s(2))
    first = fast_client.submit_workflow(flow, idempotency_key=f"{queue_name}-once")
    again = fast_client.submit_workflow(flow, idempotency_key=f"{queue_name}-once")

    assert (again.id, again.task_ids, again.duplicate, first.duplicate) == (first.id, first.task_ids, True, False)
    start_worker(queue_name)
    assert first.result(timeout=20) == 6
    assert sum(1 for _ in fast_client.list(queue_name, TaskState.SUCCEEDED)) == 2


def test_the_async_client_submits_and_awaits_a_workflow(
    fast_broker: BrokerProcess, start_worker: StartWorker, queue_name: str
) -> None:
    start_worker(queue_name)
    a = add.with_options(queue=queue_name)

    async def scenario() -> tuple[object, WorkflowState]:
        async with AsyncClient(fast_broker.address) as client:
            callback = total.with_options(queue=queue_name).s()
            handle = await client.submit_workflow(chord([a.s(1, 2), a.s(3, 4)], callback))
            result = await handle.result(timeout=20)
            return result, (await handle.get()).state

    assert asyncio.run(scenario()) == (10, WorkflowState.SUCCEEDED)


# Bad input: INVALID_ARGUMENT naming the problem, nothing stored.

def _node(name: str, queue: str, parents: tuple[str, ...] = (), **task: object) -> wf_pb.WorkflowNodeSpec:
    spec = ts.TaskSpec(queue=queue, name="worker_sdk.examples.add", **task)  # type: ignore[arg-type]
    return wf_pb.WorkflowNodeSpec(name=name, task=spec, parents=parents)


@pytest.mark.parametrize(("nodes", "field", "words"), [
    ([("a", ("c",)), ("b", ("a",)), ("c", ("b",))], "nodes[1].parents", "cycle: 'b' -> 'c' -> 'a' -> 'b'"),
    ([("a", ()), ("b", ("ghost",))], "nodes[1].parents", "unknown parent 'ghost'"),
    ([("a", ()), ("a", ())], "nodes[1].name", "duplicate node name 'a'"),
    ([("a", ()), ("b", ("b",))], "nodes[1].parents", "cannot wait for itself"),
    ([("bad name", ())], "nodes[0].name", "letters, digits"),
    ([], "nodes", "1 to 1000 nodes"),
])
def test_a_malformed_graph_is_refused_naming_the_problem(
    fast_broker: BrokerProcess, queue_name: str, nodes: list[tuple[str, tuple[str, ...]]], field: str, words: str
) -> None:
    request = wf_pb.SubmitWorkflowRequest(nodes=[_node(n, queue_name, p) for n, p in nodes])
    with grpc.insecure_channel(fast_broker.address) as channel, pytest.raises(grpc.RpcError) as caught:
        wf_grpc.WorkflowServiceStub(channel).SubmitWorkflow(request, timeout=5)
    error = caught.value
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(f"{field}: ") and words in error.details()


def test_bad_node_fields_are_refused_by_their_path(fast_broker: BrokerProcess, queue_name: str) -> None:
    cases = [
        ([_node("a", queue_name), _node("b", "bad queue!", ("a",))], "nodes[1].task.queue"),
        ([_node("a", queue_name), _node("b", queue_name, ("a",), idempotency_key="k")],
         "nodes[1].task.idempotency_key"),
        ([_node("a", queue_name), _node("b", queue_name), wf_pb.WorkflowNodeSpec(
            name="c", task=ts.TaskSpec(queue=queue_name, name="x"), parents=["a", "b"], result_passing=2)],
         "nodes[2].result_passing"),
        ([_node(f"n{i}", queue_name) for i in range(1001)], "nodes"),
    ]
    with grpc.insecure_channel(fast_broker.address) as channel:
        stub = wf_grpc.WorkflowServiceStub(channel)
        for nodes, field in cases:
            with pytest.raises(grpc.RpcError) as caught:
                stub.SubmitWorkflow(wf_pb.SubmitWorkflowRequest(nodes=nodes), timeout=5)
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert caught.value.details().startswith(f"{field}: "), caught.value.details()
    assert not any(True for _ in Client(fast_broker.address).list(queue_name, TaskState.PENDING))


def test_unknown_and_malformed_workflow_ids(fast_client: Client) -> None:
    with pytest.raises(NotFoundError):
        fast_client.get_workflow("01HAAAAAAAAAAAAAAAAAAAAAAA")
    with pytest.raises(NotFoundError):
        fast_client.cancel_workflow("01HAAAAAAAAAAAAAAAAAAAAAAA")
    with pytest.raises(Exception, match="workflow_id"):
        fast_client.get_workflow("nope")


def test_workflow_metrics_count_submits_finishes_and_releases(
    fast_broker: BrokerProcess, fast_client: Client, start_worker: StartWorker, queue_name: str
) -> None:
    start_worker(queue_name)
    before = fast_broker.metrics()
    a = add.with_options(queue=queue_name)

    fast_client.submit_workflow(chain(a.s(1, 1), a.s(1))).result(timeout=20)

    def grew(name: str, by: float, **labels: str) -> bool:
        from tests.helpers import metric_value

        return metric_value(fast_broker.metrics(), name, **labels) - metric_value(before, name, **labels) >= by

    eventually(lambda: grew("conveyor_workflows_submitted_total", 1)
               and grew("conveyor_workflows_finished_total", 1, state="succeeded")
               and grew("conveyor_workflow_node_releases_total", 2, queue=queue_name), timeout=10)


def test_the_cli_submits_shows_waits_for_and_cancels_workflows(
    fast_broker: BrokerProcess, start_worker: StartWorker, queue_name: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from client_sdk.cli import main

    start_worker(queue_name)
    flow = tmp_path / "flow.json"
    flow.write_text(json.dumps({"name": "cli", "nodes": [
        {"name": "a", "task": add.name, "queue": queue_name, "args": [1, 2]},
        {"name": "b", "task": add.name, "queue": queue_name, "args": [10], "parents": ["a"]},
    ]}))
    broker = ["--broker", fast_broker.address]

    assert main(["workflow", "submit", str(flow), "--wait", "--timeout", "20", *broker]) == 0
    submitted, finished = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert finished["state"] == "succeeded" and finished["output_nodes"] == ["b"]
    assert finished["nodes"][1]["task"]["result"] == {"json": 13}

    assert main(["workflow", "show", submitted["id"], *broker]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["nodes"][0]["state"] == "succeeded"
    assert shown["nodes"][1]["task"]["workflow"] == {"id": submitted["id"], "node": "b",
                                                     "parent_ids": [submitted["task_ids"]["a"]]}
    assert main(["workflow", "wait", submitted["id"], *broker]) == 0
    capsys.readouterr()
    assert main(["workflow", "cancel", submitted["id"], *broker]) == 2
    assert "FailedPreconditionError" in capsys.readouterr().err

"""Workflows: chains, groups, chords and general DAGs of signatures, and what the broker reports of them.

A workflow is submitted in one call; the broker releases each task once all its parents have
succeeded, handing it their results. A ``.s()`` signature receives its parent's result as its
first argument inside a chain (the list of results as a chord's callback, or after a group); an
``.si()`` signature receives nothing.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from conveyor.v1 import workflow_service_pb2 as wf_pb

from client_sdk import _convert
from client_sdk._errors import ConveyorError
from client_sdk._models import TaskInfo, TaskState
from client_sdk._task import Signature

if TYPE_CHECKING:
    from client_sdk._async_client import AsyncClient
    from client_sdk._client import Client

__all__ = [
    "DAG",
    "AsyncWorkflowHandle",
    "Chain",
    "Chord",
    "Group",
    "WorkflowCancelledError",
    "WorkflowFailedError",
    "WorkflowHandle",
    "WorkflowInfo",
    "WorkflowNodeInfo",
    "WorkflowState",
    "WorkflowTimeoutError",
    "chain",
    "chord",
    "group",
]

Passing = Literal["none", "first", "list"]
# ResultPassing wire values.
NONE, FIRST, LIST = 1, 2, 3
_PASSING = {"none": NONE, "first": FIRST, "list": LIST}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:\-]")


@dataclass(frozen=True, slots=True)
class Chain:
    """Steps run one after the other; each ``.s()`` step gets the previous step's result first.

    Its result is the last step's.
    """

    steps: tuple[Flow, ...]


@dataclass(frozen=True, slots=True)
class Group:
    """Members run in parallel; its result is the list of their results, in order."""

    members: tuple[Flow, ...]


@dataclass(frozen=True, slots=True)
class Chord:
    """A group, then a callback handed the list of the group's results; its result is the callback's."""

    header: Group
    body: Flow


def chain(*steps: Flow) -> Chain:
    """Runs steps in sequence, e.g. ``chain(fetch.s(url), parse.s(), store.s())``.

    Args:
        *steps: Signatures, groups, chords or chains.

    Returns:
        The chain.
    """
    if not steps:
        raise ValueError("a chain needs at least one step")
    return Chain(tuple(_check(s) for s in steps))


def group(*members: Flow | Iterable[Flow]) -> Group:
    """Runs members in parallel, e.g. ``group(fetch.s(a), fetch.s(b))`` or ``group(generator)``.

    Args:
        *members: Signatures, chains, groups or chords (or one iterable of them).

    Returns:
        The group.
    """
    items: list[Any] = list(members)
    if len(items) == 1 and not isinstance(items[0], Signature | Chain | Group | Chord | DAG):
        items = list(items[0])
    if not items:
        raise ValueError("a group needs at least one member")
    return Group(tuple(_check(m) for m in items))


def chord(header: Group | Iterable[Flow], body: Flow) -> Chord:
    """Runs a group, then `body` with the list of the group's results first, e.g.
    ``chord(group(fetch.s(a), fetch.s(b)), summarize.s())``.

    Args:
        header: The group (or the members of one).
        body: The callback.

    Returns:
        The chord.
    """
    return Chord(header if isinstance(header, Group) else group(header), _check(body))


class DAG:
    """A general graph: nodes with explicit names and parents.

    Example:
        >>> dag = DAG()
        >>> dag.add("fetch_a", fetch.s("a"))
        >>> dag.add("fetch_b", fetch.s("b"))
        >>> dag.add("merge", merge.s(), parents=["fetch_a", "fetch_b"])

    A ``.s()`` node gets its one parent's result first, or the list of its parents' results
    when it has several; an ``.si()`` node gets none. Its result is a dict of the results of
    the output nodes (those no other node waits for).
    """

    def __init__(self) -> None:
        self._nodes: dict[str, tuple[Signature, tuple[str, ...], Passing | None]] = {}

    def add(self, name: str, sig: Signature, *, parents: Sequence[str] = (),
            passing: Passing | None = None) -> str:
        """Adds a node.

        Args:
            name: Unique name: 1 to 128 letters, digits, '_', '-', '.' or ':'.
            sig: The task to run.
            parents: Names of the nodes it waits for (added before it).
            passing: Override how parents' results are handed over: "none", "first" or "list".

        Returns:
            The name, to use as a parent.

        Raises:
            ValueError: If the name is taken or malformed, or a parent is unknown.
        """
        if not isinstance(sig, Signature):
            raise TypeError(f"a DAG node runs a Signature, got {sig!r}")
        if not name or len(name) > 128 or _UNSAFE.search(name):
            raise ValueError(f"bad node name {name!r}: 1 to 128 letters, digits, '_', '-', '.' or ':'")
        if name in self._nodes:
            raise ValueError(f"duplicate node name {name!r}")
        for parent in parents:
            if parent not in self._nodes:
                raise ValueError(f"node {name!r}: unknown parent {parent!r} (add parents first)")
        if passing is not None and passing not in _PASSING:
            raise ValueError(f"passing must be 'none', 'first' or 'list', got {passing!r}")
        self._nodes[name] = (sig, tuple(parents), passing)
        return name

    def __len__(self) -> int:
        return len(self._nodes)


Flow = Signature | Chain | Group | Chord | DAG
# How a submitted workflow's result is assembled from its nodes' results.
Shape = tuple[Any, ...]


def _check(flow: Any) -> Flow:
    if not isinstance(flow, Signature | Chain | Group | Chord | DAG):
        raise TypeError(f"a workflow step must be a Signature, chain, group, chord or DAG, got {flow!r}")
    return flow


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[wf_pb.WorkflowNodeSpec] = []

    def name(self, sig: Signature) -> str:
        short = _UNSAFE.sub("_", sig.name.rsplit(".", 1)[-1])[:100] or "task"
        return f"{len(self.nodes)}:{short}"

    def add(self, name: str, sig: Signature, parents: tuple[str, ...], passing: int) -> None:
        self.nodes.append(wf_pb.WorkflowNodeSpec(name=name, task=_convert.signature_spec(sig), parents=parents,
                                                 result_passing=passing))

    def build(self, flow: Flow, parents: tuple[str, ...], as_list: bool) -> tuple[tuple[str, ...], Shape]:
        """Adds `flow` after `parents`; its exit nodes and result shape."""
        if isinstance(flow, Signature):
            name = self.name(flow)
            self.add(name, flow, parents, _passing(flow, parents, as_list))
            return (name,), ("node", name)
        if isinstance(flow, Chain):
            exits, shape = parents, ("list", ())
            listed = as_list
            for step in flow.steps:
                exits, shape = self.build(step, exits, listed)
                listed = isinstance(step, Group)  # the step after a group gets the list of its results
            return exits, shape
        if isinstance(flow, Group):
            all_exits: list[str] = []
            shapes = []
            for member in flow.members:
                exits, shape = self.build(member, parents, as_list)
                all_exits.extend(exits)
                shapes.append(shape)
            return tuple(all_exits), ("list", tuple(shapes))
        if isinstance(flow, Chord):
            exits, _ = self.build(flow.header, parents, as_list)
            return self.build(flow.body, exits, True)
        return self._dag(flow, parents)

    def _dag(self, dag: DAG, parents: tuple[str, ...]) -> tuple[tuple[str, ...], Shape]:
        if self.nodes or parents:
            raise ValueError("a DAG is a whole workflow: it cannot be a step of a chain, group or chord")
        children = {p for _, ps, _ in dag._nodes.values() for p in ps}
        for name, (sig, node_parents, passing) in dag._nodes.items():
            wire = _PASSING[passing] if passing is not None else _passing(sig, node_parents, False)
            self.add(name, sig, node_parents, wire)
        outputs = tuple(n for n in dag._nodes if n not in children)
        return outputs, ("dict", tuple((n, ("node", n)) for n in outputs))


def _passing(sig: Signature, parents: tuple[str, ...], as_list: bool) -> int:
    if sig.immutable or not parents:
        return NONE
    if as_list or len(parents) > 1:
        return LIST
    return FIRST


def submit_request(flow: Flow, *, name: str = "", idempotency_key: str = "",
                   idempotency_ttl: float | None = None) -> tuple[wf_pb.SubmitWorkflowRequest, Shape]:
    """The SubmitWorkflow request of a workflow, and the shape of its result."""
    builder = _Builder()
    if isinstance(flow, DAG) and not len(flow):
        raise ValueError("a DAG needs at least one node")
    _, shape = builder.build(_check(flow), (), False)
    request = wf_pb.SubmitWorkflowRequest(nodes=builder.nodes, name=name, idempotency_key=idempotency_key)
    if idempotency_ttl is not None:
        request.idempotency_ttl.CopyFrom(_convert.duration(idempotency_ttl))
    return request, shape


class WorkflowState(enum.IntEnum):
    """Where a workflow stands; the values are the wire values of conveyor.v1.WorkflowState."""

    UNSPECIFIED = 0
    RUNNING = 1
    SUCCEEDED = 2
    FAILED = 3
    CANCELLED = 4

    @property
    def terminal(self) -> bool:
        """True once the workflow has finished."""
        return self in (WorkflowState.SUCCEEDED, WorkflowState.FAILED, WorkflowState.CANCELLED)

    @property
    def label(self) -> str:
        """The lower-case name, e.g. ``"running"``."""
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class WorkflowNodeInfo:
    """One node of a workflow as it stands.

    Attributes:
        name: The node's name.
        task_id: Its task's id.
        parents: Names of the nodes it waits for.
        state: Its task's state (PENDING until released).
        task: The task record; None once its result TTL has passed.
    """

    name: str
    task_id: str
    parents: tuple[str, ...]
    state: TaskState
    task: TaskInfo | None


@dataclass(frozen=True, slots=True)
class WorkflowInfo:
    """A workflow as the broker reports it.

    Attributes:
        id: The workflow id.
        name: Its label.
        state: Where it stands.
        nodes: Every node, in submission order.
        output_nodes: Names of the nodes no other node waits for.
        created_at: When it was submitted.
        finished_at: When it reached a final state; None before.
        reason: Why it failed or was cancelled, e.g. ``"node 'parse' failed"``.
    """

    id: str
    name: str
    state: WorkflowState
    nodes: tuple[WorkflowNodeInfo, ...]
    output_nodes: tuple[str, ...]
    created_at: datetime | None
    finished_at: datetime | None
    reason: str
    _by_name: Mapping[str, WorkflowNodeInfo] = field(default_factory=dict, repr=False, compare=False)

    def node(self, name: str) -> WorkflowNodeInfo:
        """The node called `name` (KeyError if none)."""
        return self._by_name[name]


class WorkflowFailedError(ConveyorError):
    """The workflow FAILED: a node failed, expired or was cancelled, and its dependents were
    cancelled. ``info.reason`` names the node."""

    def __init__(self, info: WorkflowInfo) -> None:
        super().__init__(f"workflow {info.id} failed: {info.reason}")
        self.workflow_id = info.id
        self.info = info


class WorkflowCancelledError(ConveyorError):
    """The workflow was cancelled."""

    def __init__(self, info: WorkflowInfo) -> None:
        super().__init__(f"workflow {info.id} was cancelled: {info.reason}")
        self.workflow_id = info.id
        self.info = info


class WorkflowTimeoutError(ConveyorError):
    """The workflow did not finish in time (it goes on; ``info`` is its last known state)."""

    def __init__(self, workflow_id: str, timeout: float, info: WorkflowInfo | None) -> None:
        super().__init__(f"workflow {workflow_id} did not finish within {timeout:g}s")
        self.workflow_id = workflow_id
        self.timeout = timeout
        self.info = info


def workflow_info(message: wf_pb.Workflow) -> WorkflowInfo:
    """A Workflow message as a WorkflowInfo."""
    nodes = tuple(WorkflowNodeInfo(name=n.name, task_id=n.task_id, parents=tuple(n.parents),
                                   state=_state(n.state),
                                   task=_convert.task_info(n.task) if n.HasField("task") else None)
                  for n in message.nodes)
    return WorkflowInfo(
        id=message.id, name=message.name, state=_workflow_state(message.state), nodes=nodes,
        output_nodes=tuple(message.output_nodes),
        created_at=message.created_at.ToDatetime().replace(tzinfo=UTC) if message.HasField("created_at") else None,
        finished_at=message.finished_at.ToDatetime().replace(tzinfo=UTC) if message.HasField("finished_at") else None,
        reason=message.reason, _by_name={n.name: n for n in nodes})


def _state(value: int) -> TaskState:
    try:
        return TaskState(value)
    except ValueError:
        return TaskState.UNSPECIFIED


def _workflow_state(value: int) -> WorkflowState:
    try:
        return WorkflowState(value)
    except ValueError:
        return WorkflowState.UNSPECIFIED


def outcome(info: WorkflowInfo, shape: Shape | None) -> Any:
    """The result of a finished workflow, assembled as `shape` says (None: a dict of its output
    nodes' results), or the error that stands for its end."""
    if info.state is WorkflowState.FAILED:
        raise WorkflowFailedError(info)
    if info.state is WorkflowState.CANCELLED:
        raise WorkflowCancelledError(info)
    if shape is None:
        shape = ("dict", tuple((n, ("node", n)) for n in info.output_nodes))
    return _assemble(info, shape)


def _assemble(info: WorkflowInfo, shape: Shape) -> Any:
    kind, content = shape
    if kind == "node":
        task = info.node(content).task
        if task is None:
            raise ConveyorError(f"workflow {info.id}: the result of node {content!r} has expired")
        return _convert.outcome(task)
    if kind == "list":
        return [_assemble(info, s) for s in content]
    return {name: _assemble(info, s) for name, s in content}


def wait_request(workflow_id: str, seconds: float) -> wf_pb.WaitWorkflowRequest:
    return wf_pb.WaitWorkflowRequest(workflow_id=workflow_id, timeout=_convert.duration(max(0.0, seconds)))


class WorkflowHandle:
    """A submitted workflow: its id, its nodes' task ids and the client that submitted it.

    Attributes:
        id: The workflow id.
        task_ids: The task id of every node, by node name.
        duplicate: True when the idempotency key matched an earlier submit (this is that one).
        client: The client used for every call on this handle.
    """

    def __init__(self, workflow_id: str, client: Client, *, task_ids: Mapping[str, str] | None = None,
                 shape: Shape | None = None, duplicate: bool = False) -> None:
        self.id = workflow_id
        self.client = client
        self.task_ids = dict(task_ids or {})
        self.duplicate = duplicate
        self._shape = shape

    def get(self) -> WorkflowInfo:
        """Reads the workflow; see `Client.get_workflow`."""
        return self.client.get_workflow(self.id)

    def wait(self, timeout: float | None = None) -> WorkflowInfo:
        """Waits until the workflow finishes; see `Client.wait_workflow`."""
        return self.client.wait_workflow(self.id, timeout)

    def result(self, timeout: float | None = None) -> Any:
        """Waits for the workflow and returns its result: a chain's last step's, a group's list
        (in order), a chord's callback's, a DAG's dict of output nodes' results.

        Raises:
            WorkflowFailedError: If it failed (``info.reason`` names the node).
            WorkflowCancelledError: If it was cancelled.
            WorkflowTimeoutError: If it did not finish in time.
        """
        return outcome(self.wait(timeout), self._shape)

    def cancel(self, reason: str = "") -> WorkflowState:
        """Cancels the workflow; see `Client.cancel_workflow`."""
        return self.client.cancel_workflow(self.id, reason)

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.id}>"


class AsyncWorkflowHandle:
    """The asyncio twin of `WorkflowHandle`."""

    def __init__(self, workflow_id: str, client: AsyncClient, *, task_ids: Mapping[str, str] | None = None,
                 shape: Shape | None = None, duplicate: bool = False) -> None:
        self.id = workflow_id
        self.client = client
        self.task_ids = dict(task_ids or {})
        self.duplicate = duplicate
        self._shape = shape

    async def get(self) -> WorkflowInfo:
        """Reads the workflow; see `AsyncClient.get_workflow`."""
        return await self.client.get_workflow(self.id)

    async def wait(self, timeout: float | None = None) -> WorkflowInfo:
        """Waits until the workflow finishes; see `AsyncClient.wait_workflow`."""
        return await self.client.wait_workflow(self.id, timeout)

    async def result(self, timeout: float | None = None) -> Any:
        """Waits for the workflow and returns its result; see `WorkflowHandle.result`."""
        return outcome(await self.wait(timeout), self._shape)

    async def cancel(self, reason: str = "") -> WorkflowState:
        """Cancels the workflow; see `AsyncClient.cancel_workflow`."""
        return await self.client.cancel_workflow(self.id, reason)

    def __repr__(self) -> str:
        return f"<AsyncWorkflowHandle {self.id}>"

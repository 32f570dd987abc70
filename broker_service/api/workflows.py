"""WorkflowService: submit, read, await and cancel DAGs of tasks."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from conveyor.v1 import task_pb2
from conveyor.v1 import workflow_service_pb2 as wf
from conveyor.v1 import workflow_service_pb2_grpc as wf_grpc

from broker_service.api import convert, validate
from broker_service.api.errors import invalid_argument, server_stream, unary
from broker_service.domain import (
    ULID_LENGTH,
    NewTask,
    WorkflowNodeSpec,
    WorkflowRecord,
    WorkflowState,
    parse_task_id,
)
from broker_service.events import RESYNC, EventHub
from broker_service.metrics import Metrics
from broker_service.store.store import Store
from broker_service.workflows import Workflows

Context = Any  # grpc.aio.ServicerContext (grpc ships no type information)
NODE_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
WORKFLOW_ID = re.compile(rf"[0-9A-HJKMNP-TV-Z]{{{ULID_LENGTH}}}")
MAX_WORKFLOW_NAME = 256
MAX_IDEMPOTENCY_KEY = 256
DAY_MS = 86_400_000
# A WaitWorkflow stream re-reads the workflow at most this often: every read costs one round trip
# for all its nodes, and a burst of node changes is one update to its reader.
WAIT_COALESCE_SECONDS = 0.05


class WorkflowService(wf_grpc.WorkflowServiceServicer):
    """conveyor.v1.WorkflowService."""

    def __init__(self, store: Store, hub: EventHub, metrics: Metrics, limits: validate.Limits,
                 workflows: Workflows, *, max_nodes: int = 1000, wait_poll_seconds: float = 60.0) -> None:
        self._store = store
        self._hub = hub
        self._metrics = metrics
        self._limits = limits
        self._workflows = workflows
        self._max_nodes = max_nodes
        self._wait_poll = wait_poll_seconds

    @unary
    async def SubmitWorkflow(self, request: wf.SubmitWorkflowRequest, context: Context) -> wf.SubmitWorkflowResponse:
        nodes = submit_request(request, self._limits, self._max_nodes, time.time_ns() // 1_000_000)
        ttl_ms = DAY_MS
        if request.HasField("idempotency_ttl"):
            if request.idempotency_ttl.seconds < 0 or request.idempotency_ttl.nanos < 0:
                raise invalid_argument("idempotency_ttl", "must not be negative")
            ttl_ms = validate.duration_ms(request.idempotency_ttl)
            if not 1000 <= ttl_ms <= 30 * DAY_MS:
                raise invalid_argument("idempotency_ttl", "must be between 1s and 30 days")
        submitted = await self._workflows.submit(request.name, nodes, idempotency_key=request.idempotency_key,
                                                 idempotency_ttl_ms=ttl_ms)
        return wf.SubmitWorkflowResponse(workflow_id=submitted.workflow_id, task_ids=submitted.task_ids,
                                         duplicate=submitted.duplicate)

    @unary
    async def GetWorkflow(self, request: wf.GetWorkflowRequest, context: Context) -> wf.GetWorkflowResponse:
        workflow_id = _workflow_id(request.workflow_id)
        record = await self._store.get_workflow(workflow_id)
        return wf.GetWorkflowResponse(workflow=await self._message(record))

    @server_stream
    async def WaitWorkflow(self, request: wf.WaitWorkflowRequest,
                           context: Context) -> AsyncIterator[wf.WaitWorkflowResponse]:
        workflow_id = _workflow_id(request.workflow_id)
        deadline = _deadline(request, context)

        record = await self._store.get_workflow(workflow_id)
        ulids = {parse_task_id(node.task_id)[0] for node in record.nodes}
        queues = {parse_task_id(node.task_id)[1] for node in record.nodes}
        channel = f"wf:{workflow_id}"
        changed = asyncio.Event()

        def listener(kind: str, ids: str) -> None:
            if kind == RESYNC or not ids or any(u in ulids for u in ids.split()):
                changed.set()

        def channel_listener(kind: str, ids: str) -> None:
            changed.set()

        self._hub.add(channel, channel_listener)
        for queue in queues:
            self._hub.add(queue, listener, running=True)
        try:
            last: tuple[Any, ...] | None = None
            while True:
                changed.clear()
                message = await self._message(record)
                seen = _fingerprint(message)
                if seen != last:
                    last = seen
                    yield wf.WaitWorkflowResponse(workflow=message)
                if record.state is not WorkflowState.RUNNING and _settled(record):
                    return
                timeout = self._wait_poll
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    timeout = min(timeout, left)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout)
                    # Changes in bursts (a group's nodes finishing together) make one update.
                    await asyncio.sleep(min(WAIT_COALESCE_SECONDS, max(0.0, timeout)))
                record = await self._store.get_workflow(workflow_id)
        finally:
            self._hub.remove(channel, channel_listener)
            for queue in queues:
                self._hub.remove(queue, listener)

    @unary
    async def CancelWorkflow(self, request: wf.CancelWorkflowRequest,
                             context: Context) -> wf.CancelWorkflowResponse:
        workflow_id = _workflow_id(request.workflow_id)
        reason = validate.reason(request.reason)
        await self._workflows.cancel(workflow_id, reason or "cancelled")
        return wf.CancelWorkflowResponse(state=int(WorkflowState.CANCELLED))

    async def _message(self, record: WorkflowRecord) -> wf.Workflow:
        tasks = await self._store.get_many([_queue_and_ulid(node.task_id) for node in record.nodes])
        nodes = []
        for node, task in zip(record.nodes, tasks, strict=True):
            state = task.state if task is not None else node.settled
            nodes.append(wf.WorkflowNode(name=node.name, task_id=node.task_id, parents=node.parents,
                                         state=int(state) if state is not None else 0,
                                         task=convert.task(task) if task is not None else None))
        return wf.Workflow(id=record.workflow_id, name=record.name, state=int(record.state), nodes=nodes,
                           output_nodes=record.output_nodes, created_at=convert.timestamp(record.created_ms),
                           finished_at=convert.timestamp(record.finished_ms), reason=record.reason)



def _queue_and_ulid(task_id: str) -> tuple[str, str]:
    ulid, queue = parse_task_id(task_id)
    return queue, ulid


def _deadline(request: wf.WaitWorkflowRequest, context: Context) -> float | None:
    """The monotonic time the wait ends: the request's timeout or the call's deadline, if sooner."""
    if request.HasField("timeout") and (request.timeout.seconds < 0 or request.timeout.nanos < 0):
        raise invalid_argument("timeout", "must not be negative")
    budget = validate.duration_ms(request.timeout) / 1000 if request.HasField("timeout") else None
    remaining = context.time_remaining()
    if remaining is not None:
        budget = remaining if budget is None else min(budget, remaining)
    return None if budget is None else time.monotonic() + budget


def _settled(record: WorkflowRecord) -> bool:
    """A cancelled workflow is followed until its running nodes have stopped too."""
    return record.state is not WorkflowState.CANCELLED or all(n.settled is not None for n in record.nodes)


def _fingerprint(message: wf.Workflow) -> tuple[Any, ...]:
    return (message.state, message.reason,
            tuple((n.state, n.task.attempt, n.task.progress, n.task.cancel_requested) for n in message.nodes))


def _workflow_id(value: str) -> str:
    if not WORKFLOW_ID.fullmatch(value):
        raise invalid_argument("workflow_id", "malformed workflow id: expected a 26-character ULID")
    return value


def submit_request(request: wf.SubmitWorkflowRequest, limits: validate.Limits, max_nodes: int,
                   now_ms: int) -> list[WorkflowNodeSpec]:
    """Checks a whole submit before anything is stored; INVALID_ARGUMENT names the problem."""
    if not 1 <= len(request.nodes) <= max_nodes:
        raise invalid_argument("nodes", f"{len(request.nodes)} nodes: a workflow has 1 to {max_nodes} nodes")
    if len(request.name) > MAX_WORKFLOW_NAME or not request.name.isprintable():
        raise invalid_argument("name", f"at most {MAX_WORKFLOW_NAME} printable characters")
    if request.idempotency_key and (len(request.idempotency_key) > MAX_IDEMPOTENCY_KEY
                                    or not request.idempotency_key.isprintable()):
        raise invalid_argument("idempotency_key", f"1 to {MAX_IDEMPOTENCY_KEY} printable characters")
    index: dict[str, int] = {}
    for i, node in enumerate(request.nodes):
        if not NODE_NAME.fullmatch(node.name):
            raise invalid_argument(f"nodes[{i}].name", "must be 1 to 128 characters of letters, digits, "
                                   "'_', '-', '.' and ':'")
        if node.name in index:
            raise invalid_argument(f"nodes[{i}].name", f"duplicate node name {node.name!r} "
                                   f"(also nodes[{index[node.name]}])")
        index[node.name] = i
    specs = [_node(node, f"nodes[{i}]", index, limits, now_ms) for i, node in enumerate(request.nodes)]
    cycle = find_cycle(specs)
    if cycle:
        raise invalid_argument(f"nodes[{index[cycle[0]]}].parents",
                               "cycle: " + " -> ".join(repr(n) for n in [*cycle, cycle[0]]))
    return specs


def _node(node: wf.WorkflowNodeSpec, path: str, index: dict[str, int], limits: validate.Limits,
          now_ms: int) -> WorkflowNodeSpec:
    seen: set[str] = set()
    for parent in node.parents:
        if parent not in index:
            raise invalid_argument(f"{path}.parents", f"unknown parent {parent[:128]!r}")
        if parent == node.name:
            raise invalid_argument(f"{path}.parents", f"node {node.name!r} cannot wait for itself")
        if parent in seen:
            raise invalid_argument(f"{path}.parents", f"parent {parent!r} listed twice")
        seen.add(parent)
    if node.result_passing not in task_pb2.ResultPassing.values():
        raise invalid_argument(f"{path}.result_passing", f"unknown value {node.result_passing}")
    if node.result_passing == task_pb2.RESULT_PASSING_FIRST and len(node.parents) != 1:
        raise invalid_argument(f"{path}.result_passing", f"RESULT_PASSING_FIRST needs exactly one parent, "
                               f"node {node.name!r} has {len(node.parents)}")
    if not node.HasField("task"):
        raise invalid_argument(f"{path}.task", "required")
    if node.task.idempotency_key:
        raise invalid_argument(f"{path}.task.idempotency_key", "not allowed on a workflow node (the "
                               "workflow's idempotency_key covers retried submits)")
    if node.task.unique_key:
        raise invalid_argument(f"{path}.task.unique_key", "not allowed on a workflow node")
    task = validate.task_spec(node.task, f"{path}.task", limits, now_ms)
    return WorkflowNodeSpec(name=node.name, task=_with_passing(task, node.result_passing),
                            parents=tuple(node.parents))


def _with_passing(task: NewTask, passing: int) -> NewTask:
    return dataclasses.replace(task, result_passing=passing if passing > 1 else 0)


def find_cycle(nodes: list[WorkflowNodeSpec]) -> list[str]:
    """The nodes of one cycle in dependency order, or [] when the graph is acyclic."""
    parents = {node.name: node.parents for node in nodes}
    color: dict[str, int] = {}  # 1 on the current path, 2 done
    for start in parents:
        if color.get(start):
            continue
        path: list[str] = []
        stack: list[tuple[str, int]] = [(start, 0)]
        while stack:
            name, i = stack.pop()
            if i == 0:
                color[name] = 1
                path.append(name)
            if i < len(parents[name]):
                stack.append((name, i + 1))
                nxt = parents[name][i]
                if color.get(nxt) == 1:
                    cycle = path[path.index(nxt):]
                    return list(reversed(cycle))
                if not color.get(nxt):
                    stack.append((nxt, 0))
            else:
                color[name] = 2
                path.pop()
    return []

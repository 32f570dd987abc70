"""Workflows: submit a DAG of tasks, advance it as nodes end, cancel it, repair what a crash left.

How a workflow stays correct whatever crashes (every step is idempotent, so repeating any of
them finishes what was interrupted):

1. Submit writes every node's task PENDING in its queue, then the workflow record under the
   workflow's own hash tag (the commit point), then releases the roots. Node ulids derive from
   the workflow id and the node's index, so a retried submit rewrites the same tasks harmlessly.
2. Every script that ends a workflow node adds it to its queue's outbox (`wf_outbox`) in the
   same atomic step, and publishes `workflow <ulids>`.
3. Draining an outbox entry: settle the node in the workflow record (answers the children now
   ready and the descendants to cancel), release each ready child in its own queue (only a
   PENDING task moves, so a child is released once), cancel the others, then drop the entry.
4. The fast path drains a queue's outbox as soon as its `workflow` event arrives; the
   reconciler (loops/workflows.py) drains entries the fast path left behind and checks nodes
   pending for long: released when their parents succeeded, cancelled when one did not, when
   the workflow was cancelled, or when their workflow record never appeared (a submit that
   crashed before its commit point: reason `workflow_aborted`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from broker_service.domain import (
    NewTask,
    ParentResult,
    TaskNotFoundError,
    TaskState,
    TaskTerminalError,
    WorkflowNodeRecord,
    WorkflowNodeSpec,
    WorkflowNotFoundError,
    WorkflowRecord,
    WorkflowState,
    make_task_id,
    new_ulid,
    parse_task_id,
)
from broker_service.events import EventHub
from broker_service.loops import cancel_and_wait
from broker_service.metrics import Metrics
from broker_service.store.records import encode_parent_results
from broker_service.store.store import Store

log = logging.getLogger(__name__)

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
OUTBOX_BATCH = 500
ADVANCE_CONCURRENCY = 32  # outbox entries advanced at once (each is a few round trips)
PENDING_BATCH = 1000
ABORTED = "workflow_aborted"
WORKFLOW_EVENT = "workflow"


def node_ulid(workflow_id: str, index: int) -> str:
    """The ulid of node `index`: the workflow's time part and 80 bits hashed from (id, index)."""
    digest = int.from_bytes(hashlib.sha256(f"{workflow_id}:{index}".encode()).digest()[:10], "big")
    return workflow_id[:10] + "".join(_CROCKFORD[(digest >> shift) & 31] for shift in range(75, -1, -5))


@dataclass(frozen=True, slots=True)
class Submitted:
    """What a submit answered."""

    workflow_id: str
    task_ids: dict[str, str]
    duplicate: bool = False


class Workflows:
    """The broker's workflow engine; one per broker, safe for concurrent use."""

    def __init__(self, store: Store, metrics: Metrics, *, fast_path: bool = True,
                 outbox_grace_ms: int = 2_000, pending_grace_ms: int = 30_000) -> None:
        self._store = store
        self._metrics = metrics
        self._fast_path = fast_path
        self._outbox_grace_ms = outbox_grace_ms
        self._pending_grace_ms = pending_grace_ms
        self._dirty: set[str] = set()
        self._active: dict[str, asyncio.Task[None]] = {}
        self._pending_cursor: dict[str, tuple[int, str]] = {}
        self._known_queues: set[str] = set()
        self._stopped = False

    # Submit.

    async def submit(self, name: str, nodes: Sequence[WorkflowNodeSpec], *, idempotency_key: str = "",
                     idempotency_ttl_ms: int = 86_400_000) -> Submitted:
        """Stores a validated workflow and releases its roots (see the module docstring)."""
        workflow_id = new_ulid()
        if idempotency_key:
            claimed = await self._store.claim_workflow_key(idempotency_key, workflow_id, idempotency_ttl_ms)
            if claimed != workflow_id:
                workflow_id = claimed
                with contextlib.suppress(WorkflowNotFoundError):
                    existing = await self._store.get_workflow(workflow_id)
                    return Submitted(workflow_id, {n.name: n.task_id for n in existing.nodes}, duplicate=True)
                # the first submit stopped before its commit point: finish it with the same ids
        tasks = _node_tasks(workflow_id, nodes)
        by_queue: dict[str, list[NewTask]] = defaultdict(list)
        for task in tasks:
            by_queue[task.queue].append(task)
        new_queues = [q for q in by_queue if q not in self._known_queues]
        if new_queues:
            await self._store.register_queues(new_queues)
            self._known_queues.update(new_queues)
        await asyncio.gather(*(self._store.enqueue(q, items) for q, items in by_queue.items()))

        children: dict[str, list[str]] = defaultdict(list)
        for node in nodes:
            for parent in node.parents:
                children[parent].append(node.name)
        records = [WorkflowNodeRecord(name=node.name, task_id=task.task_id, parents=node.parents,
                                      children=tuple(children[node.name]))
                   for node, task in zip(nodes, tasks, strict=True)]
        created = await self._store.create_workflow(workflow_id, name, max(t.result_ttl_ms for t in tasks), records)
        if created:
            self._metrics.workflows_submitted.inc()
            for queue, items in by_queue.items():
                self._metrics.enqueued.labels(queue).inc(len(items))

        roots: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
        for task in tasks:
            if not task.parent_ids:
                roots[task.queue].append((task.ulid, b""))
        answers = await asyncio.gather(*(self._store.unblock(q, items) for q, items in roots.items()))
        for queue, states in zip(roots, answers, strict=True):
            self._count_releases(queue, states)
        return Submitted(workflow_id, {r.name: r.task_id for r in records}, duplicate=not created)

    # Cancel.

    async def cancel(self, workflow_id: str, reason: str) -> None:
        """Ends a running workflow CANCELLED and cancels its unfinished nodes (running ones are
        asked to stop). Raises WorkflowNotFoundError, WorkflowTerminalError."""
        task_ids = await self._store.cancel_workflow(workflow_id, reason)
        self._metrics.workflows_finished.labels(WorkflowState.CANCELLED.label).inc()
        await self._cancel_tasks([(t, "workflow cancelled") for t in task_ids])

    # The fast path.

    def attach(self, hub: EventHub) -> None:
        """Drains a queue's outbox whenever one of its scripts reports ended workflow nodes."""
        if self._fast_path:
            hub.add_any(self._on_event)

    def detach(self, hub: EventHub) -> None:
        hub.remove_any(self._on_event)

    def _on_event(self, queue: str, kind: str, ulids: str) -> None:
        if kind == WORKFLOW_EVENT:
            self.trigger(queue)

    def trigger(self, queue: str) -> None:
        """Schedules a drain of the queue's outbox (one at a time per queue; bursts coalesce)."""
        if self._stopped:
            return
        self._dirty.add(queue)
        if queue not in self._active:
            self._active[queue] = asyncio.create_task(self._drain_loop(queue), name=f"workflow-drain-{queue}")

    async def _drain_loop(self, queue: str) -> None:
        try:
            while queue in self._dirty:
                self._dirty.discard(queue)
                await self.drain(queue)
        except Exception as exc:  # noqa: BLE001 - the reconciler finishes what is left
            log.warning("workflow outbox drain failed queue=%s: %s", queue, exc)
            self._dirty.discard(queue)
        finally:
            self._active.pop(queue, None)

    async def stop(self) -> None:
        """Stops the fast path; what it leaves undone, the reconciler of any broker finishes."""
        self._stopped = True
        for task in list(self._active.values()):
            await cancel_and_wait(task)

    async def drain(self, queue: str, before_ms: int | None = None) -> int:
        """Advances the workflows of every node in the queue's outbox (those that ended before
        `before_ms` when given); how many entries were handled."""
        handled = 0
        limit = asyncio.Semaphore(ADVANCE_CONCURRENCY)
        while True:
            ulids = await self._store.outbox(queue, before_ms, OUTBOX_BATCH)
            await asyncio.gather(*(self._advance(queue, ulid, limit) for ulid in ulids))
            # Dropped only once every entry of the batch has advanced: a crash before leaves
            # them for the next pass, which repeats what was done harmlessly.
            await self._store.outbox_done(queue, ulids)
            handled += len(ulids)
            if len(ulids) < OUTBOX_BATCH:
                return handled

    async def _advance(self, queue: str, ulid: str, limit: asyncio.Semaphore) -> None:
        async with limit:
            links = await self._store.node_links(queue, ulid)
            if links is None or not links.workflow_id or not links.state.terminal:
                return
            settled = await self._store.settle_node(links.workflow_id, links.node, links.state)
            if settled.state is None:
                return
            if settled.ended:
                self._metrics.workflows_finished.labels(settled.state.label).inc()
            for task_id in settled.ready:
                await self.release(task_id)
            await self._cancel_tasks(list(settled.cancel))

    async def release(self, task_id: str) -> bool:
        """Releases a pending node with its parents' results (read from their records); True when
        this call released it. Only a PENDING task moves, so repeating this is harmless."""
        ulid, queue = parse_task_id(task_id)
        links = await self._store.node_links(queue, ulid)
        if links is None or links.state is not TaskState.PENDING:
            return False
        blob = b""
        if links.result_passing > 1:  # FIRST or LIST: the task is handed its parents' results
            parents = [parse_task_id(p) for p in links.parent_ids]
            read = await self._store.parent_results([(queue_, ulid_) for ulid_, queue_ in parents])
            blob = encode_parent_results([ParentResult(parent_id, node, payload, content_type)
                                          for parent_id, (node, payload, content_type)
                                          in zip(links.parent_ids, read, strict=True)])
        states = await self._store.unblock(queue, [(ulid, blob)])
        return self._count_releases(queue, states) > 0

    def _count_releases(self, queue: str, states: list[str]) -> int:
        released = sum(state in ("queued", "scheduled") for state in states)
        if released:
            self._metrics.workflow_releases.labels(queue).inc(released)
        return released

    async def _cancel_tasks(self, items: list[tuple[str, str]]) -> None:
        for task_id, reason in items:
            ulid, queue = parse_task_id(task_id)
            try:
                state = await self._store.cancel(queue, ulid, reason)
            except (TaskTerminalError, TaskNotFoundError):
                continue
            if state is TaskState.CANCELLED:
                self._metrics.cancelled.labels(queue).inc()

    # The reconciler.

    async def reconcile(self, queues: Sequence[str] | None = None) -> int:
        """One pass over every queue (or `queues`): outbox entries the fast path left behind, and
        nodes pending for longer than the grace. Returns how many repairs it made."""
        now = await self._store.now_ms()
        repairs = 0
        workflows: dict[str, WorkflowRecord | None] = {}
        for queue in queues if queues is not None else await self._store.queues():
            handled = await self.drain(queue, now - self._outbox_grace_ms)
            if handled:
                self._metrics.workflow_repairs.labels("outbox").inc(handled)
                log.info("reconciler advanced %d workflow nodes left in the outbox queue=%s", handled, queue)
            repairs += handled
            repairs += await self._check_pending(queue, now - self._pending_grace_ms, workflows)
        return repairs

    async def _check_pending(self, queue: str, before_ms: int, workflows: dict[str, WorkflowRecord | None]) -> int:
        page = await self._store.pending_page(queue, self._pending_cursor.get(queue), before_ms, PENDING_BATCH)
        if len(page) < PENDING_BATCH:
            self._pending_cursor.pop(queue, None)
        else:
            self._pending_cursor[queue] = page[-1]
        repairs = 0
        for _, ulid in page:
            kind = await self._repair_pending(queue, ulid, workflows)
            if kind:
                self._metrics.workflow_repairs.labels(kind).inc()
                log.info("reconciler repaired a pending workflow node kind=%s task=%s@%s", kind, ulid, queue)
                repairs += 1
        return repairs

    async def _repair_pending(self, queue: str, ulid: str, workflows: dict[str, WorkflowRecord | None]) -> str:
        links = await self._store.node_links(queue, ulid)
        if links is None or links.state is not TaskState.PENDING or not links.workflow_id:
            return ""
        if links.workflow_id not in workflows:
            try:
                workflows[links.workflow_id] = await self._store.get_workflow(links.workflow_id)
            except WorkflowNotFoundError:
                workflows[links.workflow_id] = None
        record = workflows[links.workflow_id]
        task_id = make_task_id(ulid, queue)
        if record is None:
            await self._cancel_tasks([(task_id, ABORTED)])
            return "aborted"
        if record.state is WorkflowState.CANCELLED:
            await self._cancel_tasks([(task_id, "workflow cancelled")])
            return "cancel"
        by_name = {node.name: node for node in record.nodes}
        node = by_name.get(links.node)
        if node is None:
            return ""
        parents = [by_name[p] for p in node.parents if p in by_name]
        if all(p.settled is TaskState.SUCCEEDED for p in parents):
            return "release" if await self.release(task_id) else ""
        failed = next((p for p in parents if p.settled is not None and p.settled is not TaskState.SUCCEEDED), None)
        if failed is not None:
            await self._cancel_tasks([(task_id, f"parent '{failed.name}' {_verb(failed.settled)}")])
            return "cancel"
        return ""


def _node_tasks(workflow_id: str, nodes: Sequence[WorkflowNodeSpec]) -> list[NewTask]:
    """Each node's task with its derived ulid and its workflow links."""
    index = {node.name: i for i, node in enumerate(nodes)}
    tasks = []
    for i, node in enumerate(nodes):
        parent_ids = tuple(make_task_id(node_ulid(workflow_id, index[p]), nodes[index[p]].task.queue)
                           for p in node.parents)
        tasks.append(dataclasses.replace(node.task, ulid=node_ulid(workflow_id, i), workflow_id=workflow_id,
                                         workflow_node=node.name, parent_ids=parent_ids))
    return tasks


def _verb(state: TaskState | None) -> str:
    return {TaskState.FAILED: "failed", TaskState.CANCELLED: "was cancelled",
            TaskState.EXPIRED: "expired"}.get(state or TaskState.FAILED, "failed")

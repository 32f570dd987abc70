"""Connected worker sessions: wake-ups from pub/sub, submits handed straight to a waiting worker,
cancel routing, and the drain on shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from broker_service.events import RESYNC, EventHub, Listener
from broker_service.metrics import Metrics

if TYPE_CHECKING:
    from broker_service.api.workers import WorkerSession
    from broker_service.domain import NewTask
    from broker_service.store.store import EnqueueResult, LeaseBatch, Store

log = logging.getLogger(__name__)
_WORK_KINDS = frozenset({"wake", "queued", RESYNC})
# A task left running: a session that waits for a free slot under max_running leases again.
_SLOT_KINDS = frozenset({"succeeded", "failed", "cancelled", "scheduled"})


async def enqueue(store: Store, dispatcher: Dispatcher | None, queue: str,
                  tasks: list[NewTask]) -> tuple[list[EnqueueResult], set[str]]:
    """Writes the tasks; when a worker on this broker waits for the queue with credit to spare,
    leases for it in the same store call (no wake-up, no lease call of its own). Answers the
    results and the ulids leased so: pushed to the worker already, they cannot have ended."""
    if dispatcher is None or (handoff := dispatcher.reserve(queue, len(tasks))) is None:
        return await store.enqueue(queue, tasks), set()
    batch = None
    try:
        results, batch = await store.enqueue_and_lease(queue, tasks, handoff.credits, handoff.worker_id)
    finally:
        handoff.done(batch)
    if batch.leased:
        dispatcher.metrics.handoffs.labels(queue).inc(len(batch.leased))
        # The assignments wait in the worker's outbox: let its stream send them before the
        # caller's bookkeeping, which then overlaps the task's run instead of delaying it.
        await asyncio.sleep(0)
    return results, {task.ulid for task in batch.leased}


@dataclass(frozen=True, slots=True)
class Handoff:
    """Credits taken from a worker session for a submit that leases for it (see reserve)."""

    session: WorkerSession
    queue: str
    credits: int

    @property
    def worker_id(self) -> str:
        return self.session.worker_id

    def done(self, batch: LeaseBatch | None) -> None:
        """Pushes what the submit leased (None: it failed) and gives back the credits left."""
        self.session.handed(self.queue, self.credits, batch)


class Dispatcher:
    """Knows every worker session of this broker and which queues each consumes."""

    def __init__(self, hub: EventHub, metrics: Metrics) -> None:
        self._hub = hub
        self.ends = hub.ends
        self.metrics = metrics
        self._sessions: set[WorkerSession] = set()
        self._by_queue: dict[str, set[WorkerSession]] = defaultdict(set)
        self._listeners: dict[str, Listener] = {}
        self._draining = False
        self._drain_grace = 0.0

    @property
    def draining(self) -> bool:
        return self._draining

    def register(self, session: WorkerSession) -> None:
        self._sessions.add(session)
        self.metrics.workers.set(len(self._sessions))
        for queue in session.queues:
            if not self._by_queue[queue]:
                self._hub.add(queue, self._listener(queue))
            self._by_queue[queue].add(session)
        if self._draining:
            session.drain("broker shutting down", self._drain_grace)

    def reserve(self, queue: str, most: int) -> Handoff | None:
        """Credits of this broker's worker session with the most to spare for `queue`, taken for
        tasks about to be submitted: the submit leases for it in the same round trip."""
        best = max(self._by_queue.get(queue, ()), key=lambda session: session.spare, default=None)
        if best is None or self._draining:
            return None
        credits = best.take_credits(most)
        return Handoff(best, queue, credits) if credits else None

    def unregister(self, session: WorkerSession) -> None:
        if session not in self._sessions:
            return
        self._sessions.discard(session)
        self.metrics.workers.set(len(self._sessions))
        for queue in session.queues:
            members = self._by_queue.get(queue)
            if members is None:
                continue
            members.discard(session)
            if not members:
                del self._by_queue[queue]
                self._hub.remove(queue, self._listeners.pop(queue))

    def _listener(self, queue: str) -> Listener:
        def on_event(kind: str, ulids: str) -> None:
            sessions = self._by_queue.get(queue, ())
            if kind in _WORK_KINDS:
                for session in sessions:
                    session.wake(queue)
            elif kind in _SLOT_KINDS:
                for session in sessions:
                    session.slot_freed(queue)
            elif kind == "cancel":
                wanted = set(ulids.split())
                for session in sessions:
                    session.cancel_held(queue, wanted)

        self._listeners[queue] = on_event
        return on_event

    async def drain(self, grace: float) -> None:
        """Asks every worker to drain and reconnect elsewhere; waits until they leave or `grace` ends."""
        self._draining = True
        self._drain_grace = grace
        for session in list(self._sessions):
            session.drain("broker shutting down", grace)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self._sessions and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self._sessions:
            log.warning("drain grace ended with %d worker streams still open", len(self._sessions))

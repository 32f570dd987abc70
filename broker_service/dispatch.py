"""Connected worker sessions: wake-ups from pub/sub, cancel routing, and the drain on shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import TYPE_CHECKING

from broker_service.events import RESYNC, EventHub, Listener
from broker_service.metrics import Metrics

if TYPE_CHECKING:
    from broker_service.api.workers import WorkerSession

log = logging.getLogger(__name__)
_WORK_KINDS = frozenset({"wake", "queued", RESYNC})
# A task left running: a session that waits for a free slot under max_running leases again.
_SLOT_KINDS = frozenset({"succeeded", "failed", "cancelled", "scheduled"})


class Dispatcher:
    """Knows every worker session of this broker and which queues each consumes."""

    def __init__(self, hub: EventHub, metrics: Metrics) -> None:
        self._hub = hub
        self.ends = hub.ends
        self._metrics = metrics
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
        self._metrics.workers.set(len(self._sessions))
        for queue in session.queues:
            if not self._by_queue[queue]:
                self._hub.add(queue, self._listener(queue))
            self._by_queue[queue].add(session)
        if self._draining:
            session.drain("broker shutting down", self._drain_grace)

    def unregister(self, session: WorkerSession) -> None:
        if session not in self._sessions:
            return
        self._sessions.discard(session)
        self._metrics.workers.set(len(self._sessions))
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

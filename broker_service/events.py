"""The broker's one pub/sub subscription: every queue's state changes, fanned out to local listeners."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from broker_service.loops import cancel_and_wait
from broker_service.store.keys import GlobalKeys

log = logging.getLogger(__name__)

# A listener of every queue gets (queue, kind, space-separated ulids).
AnyListener = Callable[[str, str, str], None]
# A listener gets (kind, space-separated ulids). Kind "resync" means events may have been
# missed (the subscription was re-established): re-read whatever you wait for.
Listener = Callable[[str, str], None]
RESYNC = "resync"


class EventHub:
    """Subscribes once (PSUBSCRIBE on every queue's events channel) and calls listeners per queue."""

    def __init__(self, redis: Redis, keys: GlobalKeys) -> None:
        self._redis = redis
        self._pattern = keys.queue("*").events
        self._prefix, self._suffix = self._pattern.split("*")
        self._listeners: dict[str, set[Listener]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self._any: set[AnyListener] = set()

    def add(self, queue: str, listener: Listener) -> None:
        self._listeners[queue].add(listener)

    def remove(self, queue: str, listener: Listener) -> None:
        listeners = self._listeners.get(queue)
        if listeners is not None:
            listeners.discard(listener)
            if not listeners:
                del self._listeners[queue]

    def add_any(self, listener: AnyListener) -> None:
        """Listens to the events of every queue."""
        self._any.add(listener)

    def remove_any(self, listener: AnyListener) -> None:
        self._any.discard(listener)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-hub")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def _run(self) -> None:
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.psubscribe(self._pattern)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=False, timeout=5.0)
                    if message is None:
                        continue
                    if message["type"] == "psubscribe":
                        self.connected.set()
                        self._broadcast(RESYNC)
                        delay = 0.1
                    elif message["type"] == "pmessage":
                        self._deliver(message["channel"], message["data"])
            except (RedisError, OSError) as exc:
                if self.connected.is_set():
                    log.warning("event subscription lost, retrying: %s", exc)
                self.connected.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _deliver(self, channel: bytes, data: bytes) -> None:
        queue = channel.decode()[len(self._prefix):-len(self._suffix)]
        listeners = self._listeners.get(queue)
        if not listeners and not self._any:
            return
        kind, _, ulids = data.decode().partition(" ")
        for any_listener in list(self._any):
            try:
                any_listener(queue, kind, ulids)
            except Exception:
                log.exception("event listener failed")
        if not listeners:
            return
        for listener in list(listeners):
            self._call(listener, kind, ulids)

    def _broadcast(self, kind: str) -> None:
        for listeners in list(self._listeners.values()):
            for listener in list(listeners):
                self._call(listener, kind, "")

    @staticmethod
    def _call(listener: Listener, kind: str, ulids: str) -> None:
        try:
            listener(kind, ulids)
        except Exception:
            log.exception("event listener failed")

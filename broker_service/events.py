"""The broker's one pub/sub subscription: every queue's state changes, fanned out to local listeners."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from broker_service.domain import TaskRecord
from broker_service.loops import cancel_and_wait
from broker_service.store.direct import pack, raw_stream
from broker_service.store.keys import GlobalKeys

log = logging.getLogger(__name__)

# A listener of every queue gets (queue, kind, space-separated ulids).
AnyListener = Callable[[str, str, str], None]
# A listener gets (kind, space-separated ulids). Kind "resync" means events may have been
# missed (the subscription was re-established): re-read whatever you wait for.
Listener = Callable[[str, str], None]
RESYNC = "resync"
# Longest wait for the subscription in hand before adding the `running` events to it.
RUNNING_SUBSCRIBE_WAIT = 30.0
# The subscription's PING interval; twice this without a byte from Redis ends the connection.
PING_SECONDS = 15.0
# Most bytes taken from the subscription's socket per read.
READ_BYTES = 65536


# Told a watched task's final record: (queue, ulid, record), or None when it could not be read
# along with the write (the listener reads it itself).
EndListener = Callable[[str, str, "TaskRecord | None"], None]


class TaskEnds:
    """Tasks somebody on this broker waits for, and a shortcut for their end.

    A worker session that stores the outcome of a watched task reads its record in the same
    script call and hands it over here, so the waiter answers without a second read. The
    pub/sub event of that end may come first: a waiter skips it while `storing` says the
    record is on its way (and reads the record itself if it is not, after all).
    """

    def __init__(self) -> None:
        self._watchers: dict[tuple[str, str], list[EndListener]] = {}
        self._storing: Counter[tuple[str, str]] = Counter()

    def watch(self, queue: str, ulid: str, listener: EndListener) -> None:
        self._watchers.setdefault((queue, ulid), []).append(listener)

    def unwatch(self, queue: str, ulid: str, listener: EndListener) -> None:
        listeners = self._watchers.get((queue, ulid))
        if listeners is not None and listener in listeners:
            listeners.remove(listener)
            if not listeners:
                del self._watchers[(queue, ulid)]

    def watched(self, queue: str, ulids: Iterable[str]) -> list[str]:
        """Those of `ulids` somebody waits for."""
        watchers = self._watchers
        return [ulid for ulid in ulids if (queue, ulid) in watchers] if watchers else []

    def storing(self, queue: str, ulids: Iterable[str]) -> None:
        """The outcomes of these watched tasks are being stored; `stored` follows for each."""
        self._storing.update((queue, ulid) for ulid in ulids)

    def is_storing(self, queue: str, ulid: str) -> bool:
        return (queue, ulid) in self._storing

    def stored(self, queue: str, ulid: str, record: TaskRecord | None) -> None:
        """Tells the watchers of a task the record its outcome left (terminal), or None."""
        key = (queue, ulid)
        self._storing[key] -= 1
        if self._storing[key] <= 0:
            del self._storing[key]
        for listener in list(self._watchers.get(key, ())):
            try:
                listener(queue, ulid, record)
            except Exception:
                log.exception("task end listener failed")


class EventHub:
    """Subscribes once (PSUBSCRIBE on every queue's events channel) and calls listeners per queue.

    `running` events have a channel of their own (see lua/KEYS.md), subscribed to from the first
    listener that asks for them (`add(..., running=True)`) on: until then the broker does not
    read one event per lease that nobody here would act on.
    """

    def __init__(self, redis: Redis, keys: GlobalKeys) -> None:
        self._redis = redis
        self._pattern = keys.queue("*").events
        self._running_pattern = keys.queue("*").running_events
        # (prefix, suffix) around the queue name in each pattern's channels
        self._affixes = {pattern.encode(): tuple(pattern.split("*"))
                         for pattern in (self._pattern, self._running_pattern)}
        self._listeners: dict[str, set[Listener]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._subscription: _Subscription | None = None
        self._want_running = False
        self.connected = asyncio.Event()
        self._any: set[AnyListener] = set()
        self._background: set[asyncio.Task[None]] = set()
        self.ends = TaskEnds()

    def add(self, queue: str, listener: Listener, *, running: bool = False) -> None:
        """Calls `listener` with the queue's events; `running` events too when asked (every
        listener gets them once one has asked: they are state changes like the others)."""
        self._listeners[queue].add(listener)
        if running and not self._want_running:
            self._want_running = True
            if self._subscription is not None:  # else the next subscription includes them
                # The hub's task reads the confirmation and tells every listener to re-read.
                task = asyncio.create_task(self._subscribe_running(self._subscription),
                                           name="event-hub-running")
                self._background.add(task)
                task.add_done_callback(self._background.discard)

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
        for task in list(self._background):
            await cancel_and_wait(task)
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def _subscribe_running(self, subscription: _Subscription) -> None:
        # Once the subscription in hand is confirmed (its connection exists); a lost connection
        # makes _run subscribe anew, this pattern included.
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(self.connected.wait(), RUNNING_SUBSCRIBE_WAIT)
            if subscription is self._subscription:
                await subscription.send("PSUBSCRIBE", self._running_pattern)

    async def _run(self) -> None:
        delay = 0.1
        while True:
            subscription = self._subscription = _Subscription(self._redis)
            try:
                await subscription.open()
                patterns = [self._pattern, self._running_pattern] if self._want_running else [self._pattern]
                await subscription.send("PSUBSCRIBE", *patterns)
                async for batch in subscription.replies():
                    for reply in batch:
                        kind = reply[0]
                        if kind == b"pmessage":
                            self._deliver(reply[1], reply[2], reply[3])
                        elif kind == b"psubscribe":  # events may have been missed: re-read
                            self.connected.set()
                            self._broadcast(RESYNC)
                            delay = 0.1
            except (RedisError, OSError) as exc:
                if self.connected.is_set():
                    log.warning("event subscription lost, retrying: %s", exc)
                self.connected.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                self._subscription = None
                await subscription.close()

    def _deliver(self, pattern: bytes, channel: bytes, data: bytes) -> None:
        prefix, suffix = self._affixes[pattern]
        queue = channel.decode()[len(prefix):-len(suffix)]
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


class _Subscription:
    """The hub's subscribed connection, read past redis-py's per-message machinery.

    redis-py's `PubSub.get_message` costs about 50 µs of CPU per event here (a timeout scope, a
    connection check and a dict per message); the hub reads once per wake-up whatever arrived and
    parses it with hiredis, about 15 µs per event. The connection is one of the pool's kind, made
    and set up by redis-py (TLS, AUTH, database), then kept out of the pool. A PING every
    `PING_SECONDS` keeps it honest: a connection that has said nothing for two of them (a Redis
    gone without a word, a network that drops packets) is closed and the hub subscribes anew.
    """

    def __init__(self, redis: Redis) -> None:
        self._conn: AbstractConnection = redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        self._heard = 0.0
        self._watchdog: asyncio.Task[None] | None = None

    async def open(self) -> None:
        await self._conn.connect()  # type: ignore[no-untyped-call]
        self._heard = asyncio.get_running_loop().time()
        self._watchdog = asyncio.create_task(self._ping(), name="event-hub-ping")

    async def send(self, *args: str) -> None:
        await self._conn.send_packed_command(pack(args), check_health=False)

    async def replies(self) -> AsyncIterator[list[Any]]:
        """Batches of replies, one per read from the socket; raises ConnectionError when it ends."""
        stream = raw_stream(self._conn)
        if stream is None:  # a redis-py that reads otherwise: one reply at a time through it
            while True:
                yield [await self._read_one()]
        loop = asyncio.get_running_loop()
        parser = hiredis.Reader()
        while True:
            data = await stream.read(READ_BYTES)
            if not data:
                raise RedisConnectionError("the event subscription's connection closed")
            self._heard = loop.time()
            # Whatever else this wake-up brought (the reply to the script call that published
            # these events, say) goes first: nobody waits on the hub.
            await asyncio.sleep(0)
            parser.feed(data)
            batch = []
            while (reply := parser.gets()) is not False:
                if isinstance(reply, hiredis.ReplyError):
                    raise RedisError(str(reply))
                batch.append(reply)
            yield batch

    async def _read_one(self) -> Any:
        reply = await self._conn.read_response(timeout=math.inf, push_request=True, disconnect_on_error=False)
        self._heard = asyncio.get_running_loop().time()
        return reply

    async def _ping(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(RedisError, OSError):
            while True:
                await asyncio.sleep(PING_SECONDS)
                if loop.time() - self._heard > 2 * PING_SECONDS:
                    log.warning("event subscription silent for %.0fs: reconnecting", loop.time() - self._heard)
                    break
                await self.send("PING")
        await self._conn.disconnect(nowait=True)  # the reader sees the end and the hub subscribes anew

    async def close(self) -> None:
        if self._watchdog is not None:
            await cancel_and_wait(self._watchdog)
        with contextlib.suppress(Exception):
            await self._conn.disconnect(nowait=True)


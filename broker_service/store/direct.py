"""Script calls on connections the store keeps for itself, past redis-py's per-command machinery.

`Redis.execute_command` takes a connection from the pool for every command: a lock, a condition,
a check that nothing is left unread on the socket, retry and telemetry hooks. On this broker's
hot path (two script calls per task) that is half of each call's CPU: a sequential PING took
91 µs of CPU through it and 47 µs on a kept connection (uvloop). `DirectCalls` borrows
connections from the same pool once and keeps them: a call takes an idle one, sends, reads, and
puts it back. They still count against the pool's bound, and a burst beyond the connections
kept goes through `execute_command` as before.

The rules are the client's: one retry at once, on a fresh connection, after a connection error
(a Redis restart leaves every kept connection dead); a timeout or a cancelled call closes the
connection (redis-py does so itself: its reply may still be on the way), which reconnects when
next used; an error reply leaves the connection clean.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["DirectCalls"]

# Most connections kept (and never more than half the pool's bound): enough for the script
# calls a busy broker has in flight at once, since sessions batch their tasks.
KEEP = 32


class DirectCalls:
    """Single commands on up to `keep` connections held out of `redis`'s pool (closing the pool closes them)."""

    def __init__(self, redis: Redis, keep: int | None = None) -> None:
        self._redis = redis
        self._pool = redis.connection_pool
        bound = getattr(self._pool, "max_connections", None) or 2
        self._keep = keep if keep is not None else max(1, min(KEEP, bound // 2))
        self._idle: list[AbstractConnection] = []
        self._held = 0

    async def execute(self, *args: Any) -> Any:
        conn = self._idle.pop() if self._idle else await self._take()
        if conn is None:
            return await self._redis.execute_command(*args)  # type: ignore[no-untyped-call]
        try:
            try:
                await conn.send_command(*args)
                return await conn.read_response()
            except RedisConnectionError:
                await conn.disconnect()
                await conn.send_command(*args)
                return await conn.read_response()
        finally:
            self._idle.append(conn)

    @property
    def held(self) -> int:
        """Connections taken out of the pool so far."""
        return self._held

    async def _take(self) -> AbstractConnection | None:
        if self._held >= self._keep:
            return None
        self._held += 1  # before the await: calls that start meanwhile count it
        try:
            conn: AbstractConnection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
            return conn
        except BaseException:
            self._held -= 1
            raise

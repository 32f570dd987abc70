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

Commands go out in Redis's wire form as `pack` writes it, a third of the CPU of the client's
generic encoder for a script call's forty-odd arguments; callers that repeat the same leading
arguments (a script's SHA and KEYS) can pack those once and pass them as `head`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["DirectCalls", "pack", "pack_parts"]

# Most connections kept (and never more than half the pool's bound): enough for the script
# calls a busy broker has in flight at once, since sessions batch their tasks.
KEEP = 32


def pack(args: Sequence[str | bytes | int | float], head: bytes = b"", head_count: int = 0) -> bytes:
    """The RESP array of `head_count` arguments already packed as `head`, then `args`.

    Text is UTF-8; numbers as the client writes them (`repr`); anything else, booleans included,
    raises TypeError (the client refuses them too).
    """
    out = [b"*%d\r\n" % (head_count + len(args)), head]
    append = out.append
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, int) and not isinstance(arg, bool):
            data = b"%d" % arg
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send a {type(arg).__name__} to Redis")
        append(b"$%d\r\n" % len(data))
        append(data)
        append(b"\r\n")
    return b"".join(out)


def pack_parts(args: Sequence[str | bytes | int | float]) -> bytes:
    """`args` packed without the array's header: a `head` for `pack`."""
    return pack(args).split(b"\r\n", 1)[1]


class DirectCalls:
    """Single commands on up to `keep` connections held out of `redis`'s pool (closing the pool closes them)."""

    def __init__(self, redis: Redis, keep: int | None = None) -> None:
        self._redis = redis
        self._pool = redis.connection_pool
        bound = getattr(self._pool, "max_connections", None) or 2
        self._keep = keep if keep is not None else max(1, min(KEEP, bound // 2))
        self._idle: list[AbstractConnection] = []
        self._held = 0

    async def execute(self, *args: Any, packed: bytes | None = None) -> Any:
        """Runs the command `args`; `packed`, when given, is `args` as `pack` writes them."""
        conn = self._idle.pop() if self._idle else await self._take()
        if conn is None:
            return await self._redis.execute_command(*args)  # type: ignore[no-untyped-call]
        command = pack(args) if packed is None else packed
        try:
            try:
                await conn.send_packed_command(command)
                return await conn.read_response()
            except RedisConnectionError:
                await conn.disconnect()
                await conn.send_packed_command(command)
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

"""Script calls on connections the store keeps for itself, past redis-py's per-command machinery.

`Redis.execute_command` takes a connection from the pool for every command: a lock, a condition,
a check that nothing is left unread on the socket, retry and telemetry hooks. On this broker's
hot path (two script calls per task) that is half of each call's CPU: a sequential PING took
91 µs of CPU through it and 47 µs on a kept connection (uvloop). `DirectCalls` borrows
connections from the same pool once and keeps them: a call takes an idle one, sends, reads, and
puts it back. They still count against the pool's bound, and a burst beyond the connections
kept goes through `execute_command` as before.

A kept connection is written and read raw: the command goes straight to the socket redis-py
opened (and set up: TLS, AUTH, database), and the reply is parsed by a hiredis reader of the
connection's own, with the error classes redis-py would raise. The connection's own
`send_packed_command` and `read_response` cost a health check, a task for the write's
`wait_for` and a timeout scope per call: a sequential PING on a kept connection took 45–48 µs
of CPU through them and 40–42 µs raw (uvloop; most of the rest is the two system calls). The
deadline stays: a timer closes the connection when Redis has not answered within its
`socket_timeout`. RESP2 and RESP3 read alike (hiredis parses both; a RESP3 push is passed
over, as redis-py does, though these connections subscribe to nothing). A connection that does
not read as this path expects (decoded replies, a redis-py that reads otherwise) goes through
`send_packed_command` and `read_response`.

The rules are the client's: one retry at once, on a fresh connection, after a connection error
(a Redis restart leaves every kept connection dead); a timeout or a cancelled call closes the
connection (redis-py does so itself: its reply may still be on the way), which reconnects when
next used; an error reply leaves the connection clean.

Commands go out in Redis's wire form as `pack` writes it, a third of the CPU of the client's
generic encoder for a script call's forty-odd arguments; callers that repeat the same leading
arguments (a script's SHA and KEYS) can pack those once and pass them as `head`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["DirectCalls", "pack", "pack_parts", "raw_stream"]

# Most connections kept (and never more than half the pool's bound): enough for the script
# calls a busy broker has in flight at once, since sessions batch their tasks.
KEEP = 32
# Bytes asked of the socket per read, and bytes left in the write buffer past which a call
# waits for it to drain (a command larger than the kernel took at once).
READ_BYTES = 65_536
DRAIN_BYTES = 65_536
# What hiredis makes of a RESP3 push (hiredis 3.2 and later; older ones answer it as a list).
_PUSH: type | tuple[type, ...] = getattr(hiredis, "PushNotification", ())


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
        self._wires: dict[AbstractConnection, _Wire] = {}

    async def execute(self, *args: Any, packed: bytes | None = None) -> Any:
        """Runs the command `args`; `packed`, when given, is `args` as `pack` writes them."""
        conn = self._idle.pop() if self._idle else await self._take()
        if conn is None:
            return await self._redis.execute_command(*args)  # type: ignore[no-untyped-call]
        command = pack(args) if packed is None else packed
        try:
            try:
                return await self._call(conn, command)
            except RedisConnectionError:
                await conn.disconnect()
                return await self._call(conn, command)
        finally:
            self._idle.append(conn)

    async def _call(self, conn: AbstractConnection, command: bytes) -> Any:
        if not conn.is_connected:
            await conn.connect()  # type: ignore[no-untyped-call]
        wire = self._wires.get(conn)
        if wire is None or wire.stream is not raw_stream(conn):  # new, or reconnected since
            wire = _Wire.of(conn)
            if wire is None:
                await conn.send_packed_command(command)
                return await conn.read_response()
            self._wires[conn] = wire
        try:
            reply = await wire.call(command, conn.socket_timeout)
        finally:
            if wire.broken:  # a reply may still be on its way: it must not answer the next call
                await conn.disconnect(nowait=True)
        if isinstance(reply, ResponseError):
            raise reply
        return reply

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


class _Wire:
    """A kept connection's socket as `DirectCalls` reads it: one command, then its reply."""

    __slots__ = ("broken", "parser", "stream", "writer")

    def __init__(self, stream: asyncio.StreamReader, writer: asyncio.StreamWriter, parser: Any) -> None:
        self.stream = stream
        self.writer = writer
        self.parser = parser
        self.broken = False

    @classmethod
    def of(cls, conn: AbstractConnection) -> _Wire | None:
        """The raw view of a connected `conn`; None when it does not read as this path expects."""
        stream, writer = raw_stream(conn), getattr(conn, "_writer", None)
        encoder = getattr(conn, "encoder", None)
        if stream is None or not isinstance(writer, asyncio.StreamWriter) or encoder is None:
            return None
        if encoder.decode_responses:
            return None
        if not isinstance(_PUSH, type) and str(getattr(conn, "protocol", 2)) != "2":  # a push would read as a reply
            return None
        parse_error = getattr(getattr(conn, "_parser", None), "parse_error", ResponseError)
        return cls(stream, writer, hiredis.Reader(protocolError=InvalidResponse, replyError=parse_error))

    async def call(self, command: bytes, timeout: float | None) -> Any:
        """Writes `command` and reads one reply (an error reply is returned, not raised). Any
        failure marks the wire broken: its caller drops the connection."""
        self.writer.write(command)
        timer = None
        if timeout:
            timer = asyncio.get_running_loop().call_later(timeout, self._expire)
        try:
            if self.writer.transport.get_write_buffer_size() > DRAIN_BYTES:
                await self.writer.drain()
            parser, stream = self.parser, self.stream
            while (reply := parser.gets()) is False or isinstance(reply, _PUSH):  # RESP3 pushes: not a reply
                if reply is False:
                    data = await stream.read(READ_BYTES)
                    if not data:
                        if self.broken:
                            raise RedisTimeoutError(f"no reply from Redis within {timeout:g}s")
                        raise RedisConnectionError("Redis closed the connection")
                    parser.feed(data)
            return reply
        except OSError as exc:
            self.broken = True
            raise RedisConnectionError(f"Redis connection failed: {exc}") from exc
        except BaseException:
            self.broken = True
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self) -> None:
        self.broken = True
        self.writer.transport.abort()  # the read sees the end at once


def raw_stream(conn: AbstractConnection) -> asyncio.StreamReader | None:
    """The StreamReader redis-py reads the connection's socket from (redis-py 4.2 to 8 have one)."""
    stream = getattr(conn, "_reader", None)
    return stream if isinstance(stream, asyncio.StreamReader) else None

"""DirectCalls: the store's kept connections give every call its own reply, whatever befell the last."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from broker_service.store.direct import DirectCalls, pack, pack_parts
from tests.redis_process import RedisProcess

T = TypeVar("T")


def run(redis_server: RedisProcess, body: Callable[[DirectCalls, redis.asyncio.Redis], Awaitable[T]],
        keep: int | None = None) -> T:
    async def main() -> T:
        # As the broker's: a bounded pool where a call waits for a free connection.
        pool = redis.asyncio.BlockingConnectionPool.from_url(redis_server.url, socket_timeout=5, max_connections=8,
                                                             timeout=5)
        client = redis.asyncio.Redis.from_pool(pool)
        try:
            return await asyncio.wait_for(body(DirectCalls(client, keep), client), 10)
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_a_call_answers_its_command(redis_server: RedisProcess) -> None:
    async def body(calls: DirectCalls, _: redis.asyncio.Redis) -> list[object]:
        return [await calls.execute("ECHO", f"call {i}") for i in range(3)]

    assert run(redis_server, body) == [b"call 0", b"call 1", b"call 2"]


def test_calls_in_turn_reuse_one_connection_and_bursts_stay_within_keep(redis_server: RedisProcess) -> None:
    async def body(calls: DirectCalls, _: redis.asyncio.Redis) -> tuple[int, list[object], int]:
        for _ in range(5):
            await calls.execute("PING")
        alone = calls.held
        # Ten at once, each blocking briefly on the server: two kept, the rest share (and wait for) the pool's six.
        burst = await asyncio.gather(*(calls.execute("BLPOP", f"nothing:{i}", "0.05") for i in range(10)))
        return alone, burst, calls.held

    alone, burst, held = run(redis_server, body, keep=2)
    assert alone == 1
    assert burst == [None] * 10
    assert held == 2


def test_a_cancelled_call_leaves_no_reply_for_the_next(redis_server: RedisProcess) -> None:
    async def body(calls: DirectCalls, client: redis.asyncio.Redis) -> tuple[object, object]:
        waiting = asyncio.ensure_future(calls.execute("BLPOP", "direct:cancel", "2"))
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await client.rpush("direct:cancel", "late")  # would have been the cancelled call's reply
        return await calls.execute("ECHO", "next"), await client.lpop("direct:cancel")

    assert run(redis_server, body, keep=1) == (b"next", b"late")


def test_an_error_reply_leaves_the_connection_usable(redis_server: RedisProcess) -> None:
    async def body(calls: DirectCalls, _: redis.asyncio.Redis) -> tuple[object, int]:
        with pytest.raises(NoScriptError):
            await calls.execute("EVALSHA", "0" * 40, 0)
        return await calls.execute("ECHO", "after"), calls.held

    assert run(redis_server, body) == (b"after", 1)


def test_a_connection_the_server_closed_is_replaced_once(redis_server: RedisProcess,
                                                         redis_client: redis.Redis) -> None:
    async def body(calls: DirectCalls, _: redis.asyncio.Redis) -> list[object]:
        await calls.execute("CLIENT", "SETNAME", "direct-calls")
        killed = redis_client.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1
        return [await calls.execute("ECHO", "again"), calls.held]

    assert run(redis_server, body, keep=1) == [b"again", 1]


def test_pack_writes_what_the_client_would() -> None:
    from redis.asyncio.connection import Connection

    args: list[str | bytes | int | float] = ["EVALSHA", "a" * 40, 2, "{ns:q}:t:", "{ns:q}:queued", b"\x00\xffbytes",
                                             "text é", 0, -7, 1.5, 1e-7, ""]
    expected = b"".join(Connection().pack_command(*args))
    assert pack(args) == expected
    head = pack_parts(args[:5])
    assert pack(args[5:], head, 5) == expected


def test_pack_refuses_what_the_client_refuses() -> None:
    for bad in (True, None, [1]):
        with pytest.raises(TypeError):
            pack(["SET", "k", bad])  # type: ignore[list-item]


def test_a_packed_command_runs_as_given(redis_server: RedisProcess) -> None:
    async def body(calls: DirectCalls, client: redis.asyncio.Redis) -> object:
        await calls.execute("SET", "direct:packed", "x", packed=pack(["SET", "direct:packed", "from packed"]))
        return await client.get("direct:packed")

    assert run(redis_server, body) == b"from packed"

"""DirectCalls: the store's kept connections give every call its own reply, whatever befell the last."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import redis
import redis.asyncio
import redis.exceptions
from redis.exceptions import NoScriptError

from broker_service.store import direct
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


def test_a_call_past_its_socket_timeout_fails_and_the_next_gets_its_own_reply(redis_server: RedisProcess) -> None:
    async def main() -> tuple[type[BaseException], object, object]:
        pool = redis.asyncio.BlockingConnectionPool.from_url(redis_server.url, socket_timeout=0.3, max_connections=4,
                                                             timeout=5)
        client = redis.asyncio.Redis.from_pool(pool)
        try:
            calls = DirectCalls(client, 1)
            with pytest.raises(redis.exceptions.TimeoutError) as raised:
                await calls.execute("BLPOP", "direct:slow", "1")
            await client.rpush("direct:slow", "late")  # would have been the timed-out call's reply
            return raised.type, await calls.execute("ECHO", "next"), await client.lpop("direct:slow")
        finally:
            await client.aclose()

    assert asyncio.run(main()) == (redis.exceptions.TimeoutError, b"next", b"late")


@pytest.mark.parametrize("protocol", [2, 3])
def test_replies_read_alike_over_resp2_and_resp3(redis_server: RedisProcess, protocol: int) -> None:
    async def main() -> list[object]:
        client = redis.asyncio.Redis.from_url(redis_server.url, protocol=protocol, socket_timeout=5)
        try:
            calls = DirectCalls(client, 1)
            await client.delete("direct:hash")
            await calls.execute("HSET", "direct:hash", "a", "1", "b", b"\x00\xff")
            answers = [await calls.execute("HGETALL", "direct:hash"), await calls.execute("HGET", "direct:hash", "z"),
                       await calls.execute("EVAL", "return {1, 'two', {3}}", 0)]
            with pytest.raises(redis.exceptions.ResponseError, match="boom"):
                await calls.execute("EVAL", "return redis.error_reply('boom')", 0)
            return [*answers, len(calls._wires)]
        finally:
            await client.aclose()

    hgetall, missing, nested, wires = asyncio.run(main())
    # RESP3 answers a map, RESP2 a flat array: each as redis-py's own reader would.
    assert isinstance(hgetall, dict) == (protocol == 3)
    pairs = hgetall if isinstance(hgetall, dict) else dict(zip(hgetall[::2], hgetall[1::2], strict=True))
    assert pairs == {b"a": b"1", b"b": b"\x00\xff"}
    assert missing is None
    assert nested == [1, b"two", [3]]
    assert wires == 1  # read raw, not through redis-py's read_response


def test_a_connection_the_raw_path_cannot_read_goes_through_redis_py(redis_server: RedisProcess,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(direct._Wire, "of", classmethod(lambda cls, conn: None))

    async def body(calls: DirectCalls, _: redis.asyncio.Redis) -> list[object]:
        with pytest.raises(NoScriptError):
            await calls.execute("EVALSHA", "0" * 40, 0)
        return [await calls.execute("ECHO", "through redis-py"), len(calls._wires)]

    assert run(redis_server, body) == [b"through redis-py", 0]

"""Many calls at once: the broker queues them for Redis connections instead of failing them."""

from __future__ import annotations

import asyncio
from collections import Counter

from client_sdk import AsyncClient, TaskState, signature
from tests.helpers import BrokerProcess, run_async
from tests.integration.conftest import MakeBroker


def test_a_burst_of_calls_beyond_the_redis_pool_all_succeed(make_broker: MakeBroker, queue_name: str) -> None:
    broker: BrokerProcess = make_broker(redis_max_connections=8)

    async def burst() -> tuple[Counter[str], list[str]]:
        async with AsyncClient(broker.address, timeout=30) as client:
            async def one(i: int) -> str:
                try:
                    handle = await client.enqueue(signature("tests.add", i, i).with_options(queue=queue_name))
                except Exception as exc:  # noqa: BLE001 - counted, the assertion names it
                    return f"{type(exc).__name__}: {exc}"
                return handle.id

            outcomes = await asyncio.gather(*(one(i) for i in range(600)))
            errors = Counter(o for o in outcomes if "@" not in o)
            ids = [o for o in outcomes if "@" in o]
            states = await asyncio.gather(*(client.get(task_id) for task_id in ids[:50]))
            assert {info.state for info in states} == {TaskState.QUEUED}
            return errors, ids

    errors, ids = run_async(burst(), timeout=60)
    assert not errors, errors.most_common(3)
    assert len(set(ids)) == 600

"""Conveyor's client side of each scenario: ``python -m tests.bench.conveyor_driver <op> ...``.

Runs in the project's virtualenv, against a broker the orchestrator started, and prints one
JSON line (see tests.bench.common).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import redis

from broker_service import cli
from client_sdk import AsyncClient, Client, Signature
from tests.bench import common
from tests.bench.conveyor_tasks import QUEUE, add, async_sleep, sleep, stamp

NAMESPACE = "conveyor"
OPEN_LOOP_INFLIGHT = 64


def _signature(task: str, i: int, args: Any) -> Signature:
    if task == common.STAMP:
        return stamp.s(i)
    if task == common.SLEEP:
        return sleep.s(args.sleep)
    if task == common.ASYNC_SLEEP:
        return async_sleep.s(args.sleep)
    x, y = common.arguments(i, args.payload_bytes)
    return add.s(x, y)


def enqueue(args: Any) -> dict[str, Any]:
    if args.mode == "async":
        return asyncio.run(_enqueue_async(args, 1, args.inflight))
    if args.mode == "batch-async":
        return asyncio.run(_enqueue_async(args, args.batch, args.batch_inflight))
    with Client(args.target, timeout=60) as client:
        client.enqueue(_signature(args.task, -1, args))  # connect before the clock starts
        if args.mode == "single":
            out = common.timed_enqueue(args.n, args.max_seconds,
                                       lambda i: client.enqueue(_signature(args.task, i, args)), None, 1,
                                       warm_up=args.warm_up)
        else:
            def batch(chunk: Sequence[int]) -> object:
                return client.enqueue_many([_signature(args.task, i, args) for i in chunk])

            out = common.timed_enqueue(args.n, args.max_seconds, lambda i: None, batch, args.batch,
                                       warm_up=args.warm_up)
    out["count"] += 1  # the warm-up task is queued too
    return out


async def _enqueue_async(args: Any, per_call: int, inflight: int) -> dict[str, Any]:
    """`inflight` coroutines on one AsyncClient, each submitting `per_call` tasks per call (one
    with `enqueue`, more with `enqueue_many`): later calls are encoded while earlier ones are on
    the wire or in the broker."""
    async with AsyncClient(args.target, timeout=60) as client:
        await client.enqueue(_signature(args.task, -1, args))
        cap = args.max_seconds if args.max_seconds > 0 else float("inf")

        async def submitter(last: int, started: float) -> None:
            nonlocal next_index
            while next_index < last and time.perf_counter() - started < cap:
                chunk = range(next_index, min(last, next_index + per_call))
                next_index += len(chunk)
                if per_call == 1:
                    await client.enqueue(_signature(args.task, chunk[0], args))
                else:
                    await client.enqueue_many([_signature(args.task, i, args) for i in chunk])

        next_index = -args.warm_up  # the warm-up: the same calls, before the clock starts
        await asyncio.gather(*(submitter(0, time.perf_counter()) for _ in range(inflight)))
        next_index = 0
        started = time.perf_counter()
        cpu_before = common.own_cpu()
        await asyncio.gather(*(submitter(args.n, started) for _ in range(inflight)))
        seconds = time.perf_counter() - started
        cpu_after = common.own_cpu()
    done = min(next_index, args.n)
    timed_cpu = cpu_after["user"] + cpu_after["sys"] - cpu_before["user"] - cpu_before["sys"]
    return {"count": done + 1 + args.warm_up, "seconds": seconds, "rate": done / seconds, "inflight": inflight,
            "timed_cpu": timed_cpu}


def roundtrip(args: Any) -> dict[str, Any]:
    with Client(args.target, timeout=60) as client:
        def one(i: int) -> object:  # the SDK's submit-and-wait: one session message each way
            return client.call(add.s(i, i), timeout=args.timeout)

        return common.timed_roundtrips(args.seconds, one)


def openloop(args: Any) -> dict[str, Any]:
    sent, achieved = asyncio.run(_open_loop_async(args))
    started, stored = _read_outcomes(args.redis_url, [task_id for task_id, _ in sent], args.timeout)
    return common.open_loop_summary(sent, started, stored, achieved)


async def _open_loop_async(args: Any) -> tuple[list[tuple[str, float]], float]:
    """Open loop on an AsyncClient: submission i is due at start + i / rate, whatever came before.

    At most OPEN_LOOP_INFLIGHT calls are in flight (the broker answers UNAVAILABLE past about 100
    concurrent calls: its Redis pool is bounded); each submission's time is the time it was due,
    so time spent waiting for a free slot counts in its latency.
    """
    async with AsyncClient(args.target, timeout=60) as client:
        await (await client.enqueue(stamp, -1)).result(timeout=args.timeout)  # warm up
        total = max(1, int(args.rate * args.seconds))
        sent: list[tuple[str, float]] = []
        slots = asyncio.Semaphore(OPEN_LOOP_INFLIGHT)
        calls: list[asyncio.Task[None]] = []

        async def submit(i: int, due: float) -> None:
            try:
                handle = await client.enqueue(stamp, i)
                sent.append((handle.id, due))
            finally:
                slots.release()

        loop = asyncio.get_running_loop()
        start, wall = loop.time(), time.time()
        for i in range(total):
            delay = start + i / args.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            calls.append(asyncio.create_task(submit(i, wall + i / args.rate)))
        await asyncio.wait_for(asyncio.gather(*calls), args.timeout)
        elapsed = loop.time() - start
    return sent, total / elapsed


def _read_outcomes(url: str, ids: list[str], timeout: float) -> tuple[dict[str, float], dict[str, float]]:
    """Start times (the task's own result) and result-stored times (the record's `finished`, ms)."""
    started: dict[str, float] = {}
    stored: dict[str, float] = {}
    pending = list(ids)
    deadline = time.monotonic() + timeout
    with redis.Redis.from_url(url) as r:
        while pending and time.monotonic() < deadline:
            pipe = r.pipeline(transaction=False)
            for task_id in pending:
                ulid = task_id.partition("@")[0]
                pipe.hmget(f"{{{NAMESPACE}:{QUEUE}}}:t:{ulid}", "state", "result", "finished")
            still: list[str] = []
            for task_id, (state, result, finished) in zip(pending, pipe.execute(), strict=True):
                if state == b"succeeded" and result and finished:
                    started[task_id] = float(json.loads(result))
                    stored[task_id] = int(finished) / 1000.0
                else:
                    still.append(task_id)
            pending = still
            if pending:
                time.sleep(0.1)
    return started, stored


def versions() -> dict[str, Any]:
    return {"conveyor": metadata.version("conveyor"), "grpcio": metadata.version("grpcio"),
            "protobuf": metadata.version("protobuf"), "python": sys.version.split()[0],
            "broker and worker GRPC_EXPERIMENTS": cli.grpc_experiments() or "(grpc's defaults)"}


def main(argv: Sequence[str] | None = None) -> int:
    args = common.parser("tests.bench.conveyor_driver").parse_args(argv)
    if args.op == "enqueue":
        out = enqueue(args)
    elif args.op == "roundtrip":
        out = roundtrip(args)
    elif args.op == "openloop":
        out = openloop(args)
    elif args.op == "versions":
        out = versions()
    else:
        raise SystemExit(f"unsupported op {args.op}")
    common.emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

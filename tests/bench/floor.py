"""What gRPC alone costs here: ``python -m tests.bench.floor [--seconds S]``.

Starts a grpc.aio server (in a process of its own, as the broker is) whose OpenSession answers
each message at once and does nothing else, then times one sync client sending a message on
the open stream and waiting for its reply, back to back, and then the same over unary calls.
A sequential submit to the broker is one such exchange plus the broker's own work, so this is
the floor under scenario 1's strictly sequential rate and under each leg of a round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
from conveyor.v1 import task_service_pb2 as ts

from broker_service import cli

SERVICE = "conveyor.v1.TaskService"


def _handlers() -> grpc.GenericRpcHandler:
    async def session(requests: AsyncIterator[ts.SessionRequest], context: Any) -> AsyncIterator[ts.SessionResponse]:
        async for request in requests:
            yield ts.SessionResponse(replies=[ts.SessionReply(call_id=c.call_id) for c in request.calls])

    async def enqueue(request: ts.EnqueueTaskRequest, context: Any) -> ts.EnqueueTaskResponse:
        return ts.EnqueueTaskResponse(task_id="x")

    return grpc.method_handlers_generic_handler(SERVICE, {
        "OpenSession": grpc.stream_stream_rpc_method_handler(
            session, request_deserializer=ts.SessionRequest.FromString,
            response_serializer=ts.SessionResponse.SerializeToString),
        "EnqueueTask": grpc.unary_unary_rpc_method_handler(
            enqueue, request_deserializer=ts.EnqueueTaskRequest.FromString,
            response_serializer=ts.EnqueueTaskResponse.SerializeToString),
    })


async def _serve() -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([_handlers()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 10 ms


def _time(label: str, seconds: float, once: Callable[[int], object], server_pid: int) -> None:
    once(0)
    count, server_before, client_before = 0, _cpu(server_pid), time.process_time()
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        count += 1
        once(count)
    elapsed = time.perf_counter() - started
    server_cpu, client_cpu = _cpu(server_pid) - server_before, time.process_time() - client_before
    print(f"{label}: {1e6 * elapsed / count:.0f} µs per exchange ({count / elapsed:,.0f}/s); CPU per exchange: "
          f"client {1e6 * client_cpu / count:.0f} µs, server {1e6 * server_cpu / count:.0f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.floor")
    parser.add_argument("--seconds", type=float, default=4.0, help="how long to time each kind of exchange")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve())
        return
    # The echo server runs on the broker's gRPC settings (see broker_service.cli.prefer_poller_io);
    # the client on grpc's defaults, as the SDKs leave them. GRPC_EXPERIMENTS set here wins for both.
    env = dict(os.environ)
    if (setting := cli.grpc_experiments()) is not None:
        env["GRPC_EXPERIMENTS"] = setting
    print(f"echo server: GRPC_EXPERIMENTS={env.get('GRPC_EXPERIMENTS', '')!r}; client: "
          f"GRPC_EXPERIMENTS={os.environ.get('GRPC_EXPERIMENTS', '')!r}")
    server = subprocess.Popen([sys.executable, "-m", "tests.bench.floor", "--serve"], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            outbox: queue.SimpleQueue[ts.SessionRequest] = queue.SimpleQueue()

            def requests() -> Iterator[ts.SessionRequest]:
                while True:
                    yield outbox.get()

            replies = channel.stream_stream(f"/{SERVICE}/OpenSession",
                                            request_serializer=ts.SessionRequest.SerializeToString,
                                            response_deserializer=ts.SessionResponse.FromString)(requests())

            def on_stream(i: int) -> object:
                outbox.put(ts.SessionRequest(calls=[ts.SessionCall(call_id=i)]))
                return next(replies)

            unary = channel.unary_unary(f"/{SERVICE}/EnqueueTask",
                                        request_serializer=ts.EnqueueTaskRequest.SerializeToString,
                                        response_deserializer=ts.EnqueueTaskResponse.FromString)
            _time("stream, message and reply", args.seconds, on_stream, server.pid)
            _time("unary call", args.seconds, lambda i: unary(ts.EnqueueTaskRequest(), timeout=10), server.pid)
            replies.cancel()
    finally:
        server.kill()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()

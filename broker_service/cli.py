"""The `conveyor` command: `serve` runs the broker; other subcommands belong to the SDKs.

This module is the one place that knows all three packages, and it imports an SDK only when
its subcommand runs, so the broker never loads SDK code.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from broker_service import config

USAGE = """usage: conveyor COMMAND [ARGS]

commands:
  serve      run the broker (conveyor serve --help)
  worker     run a worker: conveyor worker module:attribute
  demo       run broker, worker and a batch of example tasks together
  enqueue    submit a task            get     read a task
  wait       wait for a task          cancel  cancel a task
  list       list a queue's tasks
  queue      queue limits, show, list: a queue's limits and counts
  schedule   periodic schedules: create, list, show, pause, resume, delete
  workflow   show, wait for, cancel or submit a workflow (conveyor workflow --help)
"""
CLIENT_COMMANDS = ("enqueue", "get", "wait", "cancel", "list", "queue", "schedule", "workflow")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "serve":
        return serve(rest)
    if command == "worker":
        prefer_poller_io()  # the worker's own gRPC is all grpc.aio too (see prefer_poller_io)
        from worker_sdk.cli import main as worker_main

        return worker_main(rest)
    if command == "demo":
        from client_sdk.demo import main as demo_main

        return demo_main(rest)
    if command in CLIENT_COMMANDS:
        from client_sdk.cli import main as client_main

        return client_main(args)
    print(f"conveyor: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


def serve(argv: Sequence[str]) -> int:
    """Runs the broker until SIGTERM or SIGINT, then drains and exits 0."""
    settings = config.parse(argv)
    limit_malloc_arenas()
    prefer_poller_io()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    factory = loop_factory(settings.event_loop)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(_serve(settings))
    except KeyboardInterrupt:
        return 0


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop to run on: uvloop's (`uvloop`, or `auto` where it is installed), or asyncio's (None).

    uvloop's loop hands control between the broker's tasks and its Redis connections in less
    time than asyncio's pure-Python one; the broker behaves the same on both.
    """
    if kind == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if kind == "uvloop":
            raise SystemExit("event loop uvloop: uvloop is not installed (pip install uvloop)") from None
        return None
    return uvloop.new_event_loop


# glibc's mallopt parameter for the most malloc arenas (M_ARENA_MAX in malloc.h).
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Caps glibc's malloc arenas, as MALLOC_ARENA_MAX=2 would, before any gRPC thread starts.

    glibc gives each thread that allocates a lot an arena of its own and keeps what those
    arenas grew to, so the broker's memory crept up with its largest calls (about +25% from
    100,000 to 1,000,000 queued tasks; +5% with two arenas). An explicit MALLOC_ARENA_MAX in
    the environment wins. Answers whether the cap was set (False off glibc: nothing to do).
    """
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_ARENA_MAX, arenas))


# grpc core's EventEngine, off for the broker's and the worker's sockets (see prefer_poller_io), and the grpcio
# releases (major, minor) that have both experiments and were measured with them off.
GRPC_EXPERIMENTS = "-event_engine_client,-event_engine_listener"
GRPC_VERIFIED_RELEASES = frozenset({(1, 85)})


def prefer_poller_io() -> bool:
    """Has grpc.aio's poller thread read and write this process's sockets itself, before grpc loads.

    By default grpc core serves sockets with its EventEngine: a message read on one of its
    threads reaches the completion queue, then grpc.aio's poller thread, then the event loop.
    With the `event_engine_listener` and `event_engine_client` experiments off, the poller does
    the I/O. On a 2-core machine with grpcio 1.85, the echo server of `python -m
    tests.bench.floor` took 147 µs of CPU per message and reply instead of 191, and a
    submit-and-wait round trip through broker and worker 1.50–1.61 ms instead of 1.61–1.71
    (4 alternating runs, only the broker switched). With the worker switched as well, in 4
    alternating pairs against a worker on grpc's defaults: the worker's CPU per round trip
    248–325 µs instead of 316–500, round trip p50 1.30–1.63 ms instead of 1.42–2.21.

    For `conveyor serve` and `conveyor worker`, processes whose own gRPC is all grpc.aio. A sync
    channel on this stack reads its socket only during its own calls: an idle one answers no
    pings (a server that pings closes the connection, and the next call opens another) and
    holds a server's graceful shutdown for its whole grace (measured: the broker's stop took 5 s
    instead of 1 with an idle sync client connected). The sync client's submits and waits run on
    grpc.aio, so only its other calls (get, cancel, list...) made from a worker's tasks meet
    this. An explicit GRPC_EXPERIMENTS (even empty) wins; on a grpcio release not measured,
    nothing changes. Answers whether it was set.
    """
    if "GRPC_EXPERIMENTS" in os.environ or "grpc" in sys.modules:  # grpc reads it once, as it loads
        return False
    setting = grpc_experiments()
    if setting is None:
        return False
    os.environ["GRPC_EXPERIMENTS"] = setting
    return True


def grpc_experiments() -> str | None:
    """The GRPC_EXPERIMENTS `conveyor serve` and `conveyor worker` run with here: the environment's, else
    GRPC_EXPERIMENTS on a measured grpcio release, else none (grpc's defaults)."""
    if "GRPC_EXPERIMENTS" in os.environ:
        return os.environ["GRPC_EXPERIMENTS"]
    return GRPC_EXPERIMENTS if grpc_release() in GRPC_VERIFIED_RELEASES else None


def grpc_release() -> tuple[int, int] | None:
    """grpcio's (major, minor), read without importing grpc (which would fix its settings)."""
    spec = importlib.util.find_spec("grpc")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        text = (Path(next(iter(spec.submodule_search_locations))) / "_grpcio_metadata.py").read_text()
    except OSError:
        return None
    match = re.search(r"(\d+)\.(\d+)\.", text)
    return (int(match[1]), int(match[2])) if match else None


async def _serve(settings: config.Settings) -> int:
    from broker_service.server import Broker, BrokerStartError

    broker = Broker(settings)
    try:
        await broker.start()
    except BrokerStartError as exc:
        logging.getLogger("conveyor").error("%s", exc)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logging.getLogger("conveyor").info("event loop: %s", type(loop).__module__.partition(".")[0])
    print(f"conveyor broker listening on port {broker.port}", flush=True)
    await stop.wait()
    logging.getLogger("conveyor").info("signal received: draining (grace %.1fs)", settings.shutdown_grace_seconds)
    # Further signals (Ctrl-C reaches every process of the terminal, then a supervisor may send
    # SIGTERM) must not cut the drain short: the embedded store still has to be stopped cleanly.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: logging.getLogger("conveyor").info("already draining"))
    with contextlib.suppress(asyncio.CancelledError):
        await broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

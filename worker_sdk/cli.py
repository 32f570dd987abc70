"""`conveyor worker module:attribute`: import a Worker and run it until it is stopped."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from worker_sdk.errors import WorkerError
from worker_sdk.worker import EVENT_LOOPS, Worker, loop_factory

__all__ = ["load_worker", "main"]

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def load_worker(target: str) -> Worker:
    """Imports ``module:attribute`` (the current directory first on the path) and returns its Worker.

    Args:
        target: ``package.module:attribute``; the attribute may be dotted.

    Returns:
        The Worker found there.

    Raises:
        ValueError: `target` is malformed or does not name a Worker.
        ImportError: The module cannot be imported.
    """
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"expected module:attribute (e.g. myapp.tasks:worker), got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj: object = importlib.import_module(module_name)
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{target}: {module_name} has no attribute {attribute!r}") from None
    if not isinstance(obj, Worker):
        raise ValueError(f"{target} is a {type(obj).__name__}, not a worker_sdk.Worker")
    return obj


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor worker", description="Run a Conveyor worker.")
    parser.add_argument("target", help="module:attribute of a worker_sdk.Worker, e.g. myapp.tasks:worker")
    parser.add_argument("--broker", default=None,
                        help="broker address host:port [env CONVEYOR_BROKER, else the Worker's own, "
                             "default localhost:50051]")
    parser.add_argument("--concurrency", type=int, default=None, help="tasks run at once")
    parser.add_argument("--queues", default=None, help="comma-separated queues, most important first")
    parser.add_argument("--worker-id", default=None, help="id of this worker (default host-pid-random)")
    parser.add_argument("--shutdown-grace", type=float, default=None,
                        help="seconds running tasks get to finish on SIGTERM")
    parser.add_argument("--event-loop", default=os.environ.get("CONVEYOR_EVENT_LOOP", "auto"), choices=EVENT_LOOPS,
                        help="auto (uvloop where installed), uvloop or asyncio [env CONVEYOR_EVENT_LOOP, default auto]")
    parser.add_argument("--log-level", default=os.environ.get("CONVEYOR_LOG_LEVEL", "INFO").upper(), type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="DEBUG, INFO, WARNING or ERROR [env CONVEYOR_LOG_LEVEL, default INFO]")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``conveyor worker``; returns the exit code (0 after a clean drain)."""
    args = _parser().parse_args(argv)
    try:
        logging.basicConfig(level=args.log_level, format=LOG_FORMAT)
    except ValueError as exc:  # a bad CONVEYOR_LOG_LEVEL (the flag itself is checked by argparse)
        print(f"conveyor worker: {exc}", file=sys.stderr)
        return 2
    try:
        loop_factory(args.event_loop)  # a bad CONVEYOR_EVENT_LOOP, or uvloop asked for and missing
        worker = load_worker(args.target)
        queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues is not None else None
        worker.configure(broker=args.broker or os.environ.get("CONVEYOR_BROKER") or None,
                         concurrency=args.concurrency, queues=queues, worker_id=args.worker_id,
                         shutdown_grace=args.shutdown_grace)
    except (ImportError, ValueError, TypeError) as exc:
        print(f"conveyor worker: {exc}", file=sys.stderr)
        return 2
    try:
        worker.run(event_loop=args.event_loop)
    except WorkerError as exc:
        logger.error("%s", exc)
        return 1
    busy = worker._busy_threads
    if busy:
        # Threads of abandoned attempts cannot be stopped, and the interpreter would wait for them.
        logger.warning("exiting with %d task thread(s) still running", busy)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

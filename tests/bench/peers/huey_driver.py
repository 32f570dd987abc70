"""huey's client side of each scenario: ``python -m tests.bench.peers.huey_driver <op> ...``."""

# mypy: ignore-errors
# (Runs under .bench-venv's interpreter: Celery, Dramatiq and huey are not installed where mypy runs.)

import sys
import time
from importlib import metadata

from tests.bench import common
from tests.bench.peers import STORED_KEY
from tests.bench.peers.huey_app import add, huey, sleep, stamp


def _call(args, i):
    if args.task == common.STAMP:
        return stamp(i)
    if args.task == common.SLEEP:
        return sleep(args.sleep)
    return add(*common.arguments(i, args.payload_bytes))


def _args(args, i):
    if args.task == common.STAMP:
        return (i,)
    if args.task == common.SLEEP:
        return (args.sleep,)
    return common.arguments(i, args.payload_bytes)


def enqueue(args):
    _call(args, -1)
    task = {common.STAMP: stamp, common.SLEEP: sleep}.get(args.task, add)
    if args.mode == "single":
        out = common.timed_enqueue(args.n, args.max_seconds, lambda i: _call(args, i),
                                   None, 1, warm_up=args.warm_up)
    else:
        out = common.timed_enqueue(args.n, args.max_seconds, None,
                                   lambda chunk: task.map([_args(args, i) for i in chunk]),
                                   args.batch, warm_up=args.warm_up)
    out["count"] += 1
    return out


def roundtrip(args):
    return common.timed_roundtrips(args.seconds, lambda i: add(i, i).get(blocking=True, timeout=args.timeout))


def openloop(args):
    stamp(-1).get(blocking=True, timeout=args.timeout)
    sent, achieved = common.open_loop(args.rate, args.seconds, lambda i: stamp(i).id)
    started, stored = {}, {}
    pending = [task_id for task_id, _ in sent]
    deadline = time.monotonic() + args.timeout
    conn = huey.storage.conn
    while pending and time.monotonic() < deadline:
        times = conn.hmget(STORED_KEY, pending)
        still = []
        for task_id, when in zip(pending, times, strict=True):
            value = huey.result(task_id, preserve=True) if when is not None else None
            if value is not None:
                started[task_id] = float(value)
                stored[task_id] = float(when)
            else:
                still.append(task_id)
        pending = still
        if pending:
            time.sleep(0.1)
    return common.open_loop_summary(sent, started, stored, achieved)


def main(argv=None):
    args = common.parser("huey_driver").parse_args(argv)
    if args.op == "versions":
        out = {"huey": metadata.version("huey"), "redis-py": metadata.version("redis"),
               "python": sys.version.split()[0]}
    else:
        out = {"enqueue": enqueue, "roundtrip": roundtrip, "openloop": openloop}[args.op](args)
    common.emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

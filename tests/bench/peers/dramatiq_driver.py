"""Dramatiq's client side of each scenario: ``python -m tests.bench.peers.dramatiq_driver <op> ...``."""

# mypy: ignore-errors
# (Runs under .bench-venv's interpreter: Celery, Dramatiq and huey are not installed where mypy runs.)

import sys
import time
from importlib import metadata

import redis
from dramatiq import group
from dramatiq.results import ResultMissing

from tests.bench import common
from tests.bench.peers import STORED_KEY, redis_base
from tests.bench.peers.dramatiq_app import RESULT_DB, add, backend, broker, sleep, stamp


def _msg(args, i):
    if args.task == common.STAMP:
        return stamp.message(i)
    if args.task == common.SLEEP:
        return sleep.message(args.sleep)
    return add.message(*common.arguments(i, args.payload_bytes))


def enqueue(args):
    broker.enqueue(_msg(args, -1))
    if args.mode == "single":
        out = common.timed_enqueue(args.n, args.max_seconds, lambda i: broker.enqueue(_msg(args, i)),
                                   None, 1, warm_up=args.warm_up)
    else:
        out = common.timed_enqueue(args.n, args.max_seconds, None,
                                   lambda chunk: group(_msg(args, i) for i in chunk).run(),
                                   args.batch, warm_up=args.warm_up)
    out["count"] += 1
    return out


def roundtrip(args):
    timeout_ms = int(args.timeout * 1000)
    return common.timed_roundtrips(
        args.seconds, lambda i: add.send(i, i).get_result(block=True, timeout=timeout_ms))


def openloop(args):
    stamp.send(-1).get_result(block=True, timeout=int(args.timeout * 1000))
    messages = {}

    def submit(i):
        message = stamp.send(i)
        messages[message.message_id] = message
        return message.message_id

    sent, achieved = common.open_loop(args.rate, args.seconds, submit)
    started, stored = {}, {}
    pending = [task_id for task_id, _ in sent]
    deadline = time.monotonic() + args.timeout
    with redis.Redis.from_url(f"{redis_base()}/{RESULT_DB}") as r:
        while pending and time.monotonic() < deadline:
            times = r.hmget(STORED_KEY, pending)
            still = []
            for task_id, when in zip(pending, times, strict=True):
                try:
                    value = backend.get_result(messages[task_id])
                except ResultMissing:
                    value = None
                if value is not None and when is not None:
                    started[task_id] = float(value)
                    stored[task_id] = float(when)
                else:
                    still.append(task_id)
            pending = still
            if pending:
                time.sleep(0.1)
    return common.open_loop_summary(sent, started, stored, achieved)


def main(argv=None):
    args = common.parser("dramatiq_driver").parse_args(argv)
    if args.op == "versions":
        out = {"dramatiq": metadata.version("dramatiq"), "redis-py": metadata.version("redis"),
               "python": sys.version.split()[0]}
    else:
        out = {"enqueue": enqueue, "roundtrip": roundtrip, "openloop": openloop}[args.op](args)
    common.emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

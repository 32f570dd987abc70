"""Celery's client side of each scenario: ``python -m tests.bench.peers.celery_driver <op> ...``."""

# mypy: ignore-errors
# (Runs under .bench-venv's interpreter: Celery, Dramatiq and huey are not installed where mypy runs.)

import json
import sys
import time
from datetime import UTC, datetime
from importlib import metadata

import redis
from celery import group

from tests.bench import common
from tests.bench.peers import redis_base
from tests.bench.peers.celery_app import RESULT_DB, add, app, sleep, stamp


def _sig(args, i):
    if args.task == common.STAMP:
        return stamp.s(i)
    if args.task == common.SLEEP:
        return sleep.s(args.sleep)
    return add.s(*common.arguments(i, args.payload_bytes))


def enqueue(args):
    _sig(args, -1).apply_async()  # connect before the clock starts
    if args.mode == "single":
        out = common.timed_enqueue(args.n, args.max_seconds, lambda i: _sig(args, i).apply_async(),
                                   None, 1, warm_up=args.warm_up)
    else:
        out = common.timed_enqueue(args.n, args.max_seconds, None,
                                   lambda chunk: group(_sig(args, i) for i in chunk).apply_async(),
                                   args.batch, warm_up=args.warm_up)
    out["count"] += 1
    return out


def roundtrip(args):
    return common.timed_roundtrips(args.seconds, lambda i: add.delay(i, i).get(timeout=args.timeout))


def openloop(args):
    stamp.delay(-1).get(timeout=args.timeout)
    sent, achieved = common.open_loop(args.rate, args.seconds, lambda i: stamp.delay(i).id)
    started, stored = {}, {}
    pending = [task_id for task_id, _ in sent]
    deadline = time.monotonic() + args.timeout
    with redis.Redis.from_url(f"{redis_base()}/{RESULT_DB}") as r:
        while pending and time.monotonic() < deadline:
            values = r.mget([f"celery-task-meta-{task_id}" for task_id in pending])
            still = []
            for task_id, raw in zip(pending, values, strict=True):
                meta = json.loads(raw) if raw else None
                if meta and meta.get("status") == "SUCCESS":
                    started[task_id] = float(meta["result"])
                    done = datetime.fromisoformat(meta["date_done"])
                    if done.tzinfo is None:
                        done = done.replace(tzinfo=UTC)
                    stored[task_id] = done.timestamp()
                else:
                    still.append(task_id)
            pending = still
            if pending:
                time.sleep(0.1)
    return common.open_loop_summary(sent, started, stored, achieved)


def main(argv=None):
    args = common.parser("celery_driver").parse_args(argv)
    if args.op == "versions":
        out = {"celery": metadata.version("celery"), "kombu": metadata.version("kombu"),
               "redis-py": metadata.version("redis"), "python": sys.version.split()[0]}
    else:
        out = {"enqueue": enqueue, "roundtrip": roundtrip, "openloop": openloop}[args.op](args)
    common.emit(out)
    app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a round trip's time goes: ``python -m tests.bench.breakdown --target HOST:PORT``.

Needs a broker and a worker running the benchmark's tasks, for example::

    conveyor serve --listen 127.0.0.1:50051 &
    conveyor worker tests.bench.conveyor_tasks:worker --broker 127.0.0.1:50051 --concurrency 8 &

Submits `add` and waits for its result, back to back, then reads every tenth task's timestamps
(Redis clock, whole milliseconds, the same machine's clock as this process) and prints the mean
of each leg: submit → stored, submit → submit answered, stored → started, started → finished,
finished → result in hand. Means over thousands of trips, so the 1 ms resolution averages out,
except that `stored` and `finished` are truncated (about 0.5 ms early on average).
"""

from __future__ import annotations

import argparse
import statistics
import time

from client_sdk import Client
from tests.bench.conveyor_tasks import add

LEGS = ("submit → stored", "submit → answered", "stored → started", "started → finished", "finished → result")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.breakdown")
    parser.add_argument("--target", default="127.0.0.1:50051", help="broker address")
    parser.add_argument("--seconds", type=float, default=8.0, help="how long to run round trips")
    args = parser.parse_args()
    with Client(args.target, timeout=60) as client:
        for i in range(50):  # warm up: connections, sessions, the worker's first task
            client.enqueue(add, i, i).result(timeout=10)
        trips = []
        end = time.time() + args.seconds
        while time.time() < end:
            sent = time.time()
            handle = client.enqueue(add, 1, 2)
            answered = time.time()
            handle.result(timeout=10)
            trips.append((sent, answered, time.time(), handle.id))
        legs = []
        for sent, answered, received, task_id in trips[::10]:
            info = client.get(task_id)
            assert info.created_at and info.started_at and info.finished_at
            stored, started, finished = (t.timestamp() for t in (info.created_at, info.started_at, info.finished_at))
            legs.append((stored - sent, answered - sent, started - stored, finished - started, received - finished))
    total = [(received - sent) * 1000 for sent, _, received, _ in trips]
    print(f"{len(trips)} round trips: p50 {statistics.median(total):.2f} ms, "
          f"p99 {sorted(total)[int(len(total) * 0.99)]:.2f} ms")
    for k, name in enumerate(LEGS):
        print(f"  {name:20s} mean {statistics.mean(leg[k] for leg in legs) * 1000:6.2f} ms")


if __name__ == "__main__":
    main()

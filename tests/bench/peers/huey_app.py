"""huey: RedisHuey (db 5) with results and notify_result=True (results are waited on by BLPOP)."""

# mypy: ignore-errors
# (Runs under .bench-venv's interpreter: Celery, Dramatiq and huey are not installed where mypy runs.)

import time

import redis
from huey import RedisHuey, signals

from tests.bench.peers import STORED_KEY, record_stored, redis_base

DB = 5
NAME = "bench"

# Room for one connection per worker thread (scenario 8 runs 200 threads; the default pool holds 100).
huey = RedisHuey(NAME, url=f"{redis_base()}/{DB}?max_connections=1000", results=True, notify_result=True)

if record_stored():
    _client = redis.Redis.from_url(f"{redis_base()}/{DB}")

    @huey.signal(signals.SIGNAL_COMPLETE)
    def _stored(signal, task, *args, **kwargs):
        # Sent right after put_result: the result is stored.
        _client.hset(STORED_KEY, task.id, repr(time.time()))


@huey.task(name="add")
def add(x, y):
    return x + y


@huey.task(name="stamp")
def stamp(i):
    return time.time()


@huey.task(name="sleep")
def sleep(seconds):
    time.sleep(seconds)
    return 1

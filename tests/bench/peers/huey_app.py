"""huey: RedisHuey (db 5) with results and notify_result=True (results are waited on by BLPOP)."""

import time

import redis
from huey import RedisHuey, signals

from tests.bench.peers import STORED_KEY, record_stored, redis_base

DB = 5
NAME = "bench"

huey = RedisHuey(NAME, url=f"{redis_base()}/{DB}", results=True, notify_result=True)

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

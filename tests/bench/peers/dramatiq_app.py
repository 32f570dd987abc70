"""Dramatiq with its Redis broker (db 3) and the Results middleware on Redis (db 4)."""

# mypy: ignore-errors
# (Runs under .bench-venv's interpreter: Celery, Dramatiq and huey are not installed where mypy runs.)

import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from tests.bench.peers import STORED_KEY, record_stored, redis_base

BROKER_DB, RESULT_DB = 3, 4
QUEUE = "default"


# Room for one connection per worker thread (scenario 8 runs 200 threads; redis-py's pool holds 100).
POOL = "?max_connections=1000"


class RecordStored(Middleware):
    """After the Results middleware stored a result: when that was (open-loop scenario only)."""

    def __init__(self):
        self.client = redis.Redis.from_url(f"{redis_base()}/{RESULT_DB}{POOL}")

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if exception is None:
            self.client.hset(STORED_KEY, message.message_id, repr(time.time()))


broker = RedisBroker(url=f"{redis_base()}/{BROKER_DB}{POOL}")
backend = RedisBackend(url=f"{redis_base()}/{RESULT_DB}{POOL}")
broker.add_middleware(Results(backend=backend))
if record_stored():
    broker.add_middleware(RecordStored())
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="add", store_results=True, max_retries=0)
def add(x, y):
    return x + y


@dramatiq.actor(actor_name="stamp", store_results=True, max_retries=0)
def stamp(i):
    return time.time()


@dramatiq.actor(actor_name="sleep", store_results=True, max_retries=0)
def sleep(seconds):
    time.sleep(seconds)
    return 1

"""Celery with a Redis broker (db 1) and the Redis result backend (db 2)."""

# mypy: ignore-errors
# (Runs under .bench-venv's interpreter: Celery, Dramatiq and huey are not installed where mypy runs.)

import time

from celery import Celery

from tests.bench.peers import redis_base

BROKER_DB, RESULT_DB = 1, 2

app = Celery("bench", broker=f"{redis_base()}/{BROKER_DB}", backend=f"{redis_base()}/{RESULT_DB}")
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_ignore_result=False,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.add")
def add(x, y):
    return x + y


@app.task(name="bench.stamp")
def stamp(i):
    return time.time()


@app.task(name="bench.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return 1

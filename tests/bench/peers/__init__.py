"""The peers' side of the benchmark: one app module and one driver per peer, run by .bench-venv's Python.

Each app reads the server from BENCH_REDIS (``redis://127.0.0.1:PORT``) and keeps to its own
database numbers on it, so the systems share one server without sharing keys:
Conveyor 0, Celery 1 (broker) and 2 (results), Dramatiq 3 and 4, huey 5.
"""

import os


def redis_base() -> str:
    """``redis://host:port`` of the benchmark's server, without a database number."""
    url = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6390")
    return url.rstrip("/").rsplit("/", 1)[0] if url.count("/") > 2 else url.rstrip("/")


def record_stored() -> bool:
    """True when workers must record when each result was stored (the open-loop scenario)."""
    return os.environ.get("BENCH_RECORD_STORED") == "1"


STORED_KEY = "bench:stored"

"""The benchmark suite: Conveyor side by side with Celery, Dramatiq and huey (`make bench`).

Run ``python -m tests.bench --help``. Nothing here is imported by the product; the peers' code
(tests/bench/peers/) runs in its own virtualenv (.bench-venv) and imports only the standard
library from this package (tests.bench.common).
"""

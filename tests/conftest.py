"""Fixtures shared by every test tier: a private Redis-compatible server and clients of it."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import pytest
import redis

from tests.redis_process import RedisProcess

_names = itertools.count()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    """One server for the session, on a free port (never the machine's own Redis)."""
    server = RedisProcess()
    server.start()
    yield server
    server.close()


@pytest.fixture
def redis_client(redis_server: RedisProcess) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture
def queue_name(request: pytest.FixtureRequest) -> str:
    """A queue name no other test uses, so tests share one server without flushing it."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"q{next(_names)}-{request.node.name[:40]}")

"""Redis errors to the store's domain errors: transport trouble, and script replies by their first word."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from broker_service.domain import (
    StaleLeaseError,
    StoreError,
    StoreUnavailableError,
    TaskNotFoundError,
    TaskTerminalError,
)

# Script error replies (`{err = "CODE detail"}`, see lua/KEYS.md) by their first word.
_DOMAIN_ERRORS: dict[str, type[StoreError]] = {
    "NOT_FOUND": TaskNotFoundError,
    "TERMINAL": TaskTerminalError,
    "STALE": StaleLeaseError,
}

# Server replies that mean "not now" rather than "wrong": a client may retry them.
_UNAVAILABLE_REPLIES = frozenset({
    "BUSY", "LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "OOM", "NOREPLICAS",
})


def translate(exc: BaseException) -> BaseException:
    """The domain error for a Redis (or socket) error; anything else is returned unchanged."""
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
        return StoreUnavailableError(f"redis: {exc}" if str(exc) else f"redis: {type(exc).__name__}")
    if isinstance(exc, ResponseError):
        text = str(exc)
        code, _, detail = text.partition(" ")
        domain = _DOMAIN_ERRORS.get(code)
        if domain is not None:
            return domain(detail)
        if code in _UNAVAILABLE_REPLIES:
            return StoreUnavailableError(f"redis: {text}")
        return StoreError(f"redis: {text}")
    if isinstance(exc, RedisError):
        return StoreError(f"redis: {exc}")
    return exc


@contextlib.contextmanager
def redis_errors() -> Iterator[None]:
    """Re-raises Redis and socket errors of the block as domain errors."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise translate(exc) from exc


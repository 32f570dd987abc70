"""Exceptions a task raises to steer its retries, and the worker's own error."""

from __future__ import annotations

from client_sdk import ConveyorError

__all__ = ["NonRetryableError", "PayloadError", "Retry", "WorkerError"]


class Retry(Exception):
    """Raised by a task to ask for another attempt.

    The broker schedules the next attempt after exactly ``after`` seconds instead of the
    task's backoff policy (or by the policy when ``after`` is None). The attempt still
    counts: when the task has used all its attempts it fails for good.

    Args:
        after: Seconds to wait before the next attempt; None follows the retry policy.
        reason: Free text stored as the attempt's error message.

    Example:
        >>> raise Retry(after=30, reason="rate limited")  # doctest: +SKIP
    """

    def __init__(self, after: float | None = None, reason: str = "") -> None:
        if after is not None and after < 0:
            raise ValueError(f"Retry(after=...) must be >= 0, got {after!r}")
        super().__init__(reason or (f"retry in {after:g}s" if after is not None else "retry requested"))
        self.after = after
        self.reason = reason


class NonRetryableError(Exception):
    """Base class of errors that must not be retried.

    A task raising an instance of a subclass (or of this class) fails for good: the broker
    moves it to the dead-letter set whatever attempts it has left.
    """


class PayloadError(NonRetryableError):
    """A task's payload cannot be turned into arguments of its function; retrying will not help."""


class WorkerError(ConveyorError):
    """The worker cannot go on, e.g. the broker rejected its Hello as invalid."""

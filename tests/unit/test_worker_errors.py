"""How a raised exception becomes an attempt's error: type, message, traceback, retryable, retry delay."""

from __future__ import annotations

import pytest

from worker_sdk import NonRetryableError, Retry
from worker_sdk._runner import MAX_MESSAGE_CHARS, failure_from_exception, not_registered, qualified_name


class CustomError(Exception):
    pass


class Permanent(NonRetryableError):
    pass


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001 - the point is to capture it
        return caught


def test_builtin_types_keep_their_bare_name_others_are_qualified() -> None:
    assert qualified_name(ValueError) == "ValueError"
    assert qualified_name(TimeoutError) == "TimeoutError"
    assert qualified_name(CustomError) == f"{__name__}.CustomError"


def test_an_exception_fails_the_attempt_retryably_with_its_traceback() -> None:
    failed = failure_from_exception(_raised(CustomError("boom")))
    assert failed.type == f"{__name__}.CustomError"
    assert failed.message == "boom"
    assert failed.retryable is True
    assert failed.retry_after is None
    assert "Traceback (most recent call last)" in failed.traceback
    assert "_raised" in failed.traceback and failed.traceback.rstrip().endswith("CustomError: boom")


def test_non_retryable_error_subclasses_are_not_retried() -> None:
    assert failure_from_exception(_raised(Permanent("no"))).retryable is False
    assert failure_from_exception(_raised(NonRetryableError("no"))).retryable is False


def test_dont_retry_on_matches_subclasses_too() -> None:
    assert failure_from_exception(_raised(KeyError("k")), (LookupError,)).retryable is False
    assert failure_from_exception(_raised(ValueError("v")), (LookupError,)).retryable is True


def test_retry_carries_its_exact_delay_and_reason() -> None:
    failed = failure_from_exception(_raised(Retry(after=2.5, reason="rate limited")), (Retry,))
    assert failed.retryable is True
    assert failed.retry_after == 2.5
    assert failed.message == "rate limited"
    assert failed.type == "worker_sdk.errors.Retry"


def test_retry_without_delay_follows_the_policy() -> None:
    assert failure_from_exception(_raised(Retry())).retry_after is None


def test_retry_rejects_a_negative_delay() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        Retry(after=-1)


def test_long_messages_are_truncated() -> None:
    failed = failure_from_exception(_raised(ValueError("x" * (MAX_MESSAGE_CHARS * 2))))
    assert len(failed.message) == MAX_MESSAGE_CHARS


def test_unknown_task_names_fail_retryably_as_not_registered() -> None:
    failed = not_registered("app.missing", ["app.add", "app.mul"])
    assert failed.type == "NotRegistered"
    assert failed.retryable is True
    assert "'app.missing'" in failed.message and "app.add" in failed.message

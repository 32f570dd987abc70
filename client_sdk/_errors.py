"""The SDK's errors, and the one place a gRPC status becomes one of them."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from client_sdk._models import RemoteError

if TYPE_CHECKING:
    from client_sdk._models import TaskInfo

__all__ = [
    "ConveyorError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "TaskCancelledError",
    "TaskExpiredError",
    "TaskFailedError",
    "TaskTimeoutError",
    "UnavailableError",
    "from_rpc_error",
]

logger = logging.getLogger(__name__)


class ConveyorError(Exception):
    """Base of every error the SDK raises.

    Attributes:
        message: What went wrong.
        code: The gRPC status code name (e.g. ``"NOT_FOUND"``) when the broker answered with
            one, else None.
        reason: The ``google.rpc.ErrorInfo`` reason the broker attached, or ``""``.
        metadata: The ``google.rpc.ErrorInfo`` metadata, or an empty mapping.
    """

    def __init__(self, message: str = "", *, code: str | None = None, reason: str = "",
                 metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata: Mapping[str, str] = dict(metadata or {})


class InvalidArgumentError(ConveyorError):
    """The broker refused the request as malformed (INVALID_ARGUMENT); nothing was stored.

    Attributes:
        field: The first offending field named by the broker's ``BadRequest`` detail,
            e.g. ``"task.priority"`` or ``"tasks[3].queue"``; None if it named none.
        violations: Every ``(field, description)`` pair of the ``BadRequest`` detail.
    """

    def __init__(self, message: str = "", *, field: str | None = None,
                 violations: tuple[tuple[str, str], ...] = (), **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.field = field
        self.violations = violations


class NotFoundError(ConveyorError):
    """The task is unknown, or its record expired (NOT_FOUND)."""


class FailedPreconditionError(ConveyorError):
    """The task is in a state that forbids the request, e.g. cancelling a finished task."""


class UnavailableError(ConveyorError):
    """The broker could not be reached or could not reach its store (UNAVAILABLE); retry later."""


class DeadlineExceededError(ConveyorError):
    """The call did not finish within its deadline (DEADLINE_EXCEEDED)."""


class _TaskOutcomeError(ConveyorError):
    def __init__(self, message: str, task_id: str, info: TaskInfo | None) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.info = info


class TaskFailedError(_TaskOutcomeError):
    """The task ended FAILED: every attempt failed, or a failure was not retryable.

    Attributes:
        task_id: Id of the task.
        error: What the last attempt reported.
        info: The task record, when known.
    """

    def __init__(self, task_id: str, error: RemoteError, info: TaskInfo | None = None) -> None:
        super().__init__(f"task {task_id} failed: {error}", task_id, info)
        self.error = error


class TaskCancelledError(_TaskOutcomeError):
    """The task ended CANCELLED.

    Attributes:
        task_id: Id of the task.
        info: The task record, when known.
    """

    def __init__(self, task_id: str, info: TaskInfo | None = None) -> None:
        super().__init__(f"task {task_id} was cancelled", task_id, info)


class TaskExpiredError(_TaskOutcomeError):
    """The task ended EXPIRED: it did not start before its schedule-to-start deadline.

    Attributes:
        task_id: Id of the task.
        info: The task record, when known.
    """

    def __init__(self, task_id: str, info: TaskInfo | None = None) -> None:
        super().__init__(f"task {task_id} expired before it started", task_id, info)


class TaskTimeoutError(_TaskOutcomeError):
    """The task did not reach a terminal state within the time waited; it may still finish.

    Attributes:
        task_id: Id of the task.
        timeout: Seconds waited.
        info: The last state seen, when one was.
    """

    def __init__(self, task_id: str, timeout: float, info: TaskInfo | None = None) -> None:
        state = f" (last seen {info.state.label})" if info is not None else ""
        super().__init__(f"task {task_id} did not finish within {timeout:g}s{state}", task_id, info)
        self.timeout = timeout


_BY_CODE: dict[grpc.StatusCode, type[ConveyorError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}


def _rich_status(error: grpc.RpcError) -> status_pb2.Status | None:
    try:
        status: status_pb2.Status | None = rpc_status.from_call(error)
    except (ValueError, DecodeError, AttributeError, TypeError) as exc:
        # Details that do not parse or disagree with the status still leave an error: keep its code.
        logger.debug("undecodable status details: %s", exc)
        return None
    return status


def _violations(status: status_pb2.Status | None) -> tuple[tuple[str, str], ...]:
    found: list[tuple[str, str]] = []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            found.extend((v.field, v.description) for v in bad_request.field_violations)
    return tuple(found)


def _error_info(status: status_pb2.Status | None) -> tuple[str, dict[str, str]]:
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason, dict(info.metadata)
    return "", {}


def from_rpc_error(error: grpc.RpcError) -> ConveyorError:
    """Translates a failed gRPC call into the matching SDK error.

    Rich status details are decoded: a ``google.rpc.BadRequest`` gives
    `InvalidArgumentError.field`, a ``google.rpc.ErrorInfo`` gives ``reason`` and ``metadata``.

    Args:
        error: The error a sync or asyncio gRPC call raised.

    Returns:
        The SDK error to raise (chain it ``from error``).
    """
    code_fn = getattr(error, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details_fn = getattr(error, "details", None)
    details = (details_fn() if callable(details_fn) else None) or ""
    code_name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    status = _rich_status(error)
    reason, metadata = _error_info(status)
    message = details or code_name
    cls = _BY_CODE.get(code, ConveyorError)
    if cls is InvalidArgumentError:
        violations = _violations(status)
        return InvalidArgumentError(message, field=violations[0][0] if violations else None,
                                    violations=violations, code=code_name, reason=reason,
                                    metadata=metadata)
    return cls(message, code=code_name, reason=reason, metadata=metadata)


# --- client sessions: a call's own google.rpc.Status, answered on the session stream ---

_CODES = {code.value[0]: code for code in grpc.StatusCode}


def from_status(status: status_pb2.Status) -> ConveyorError:
    """Translates the google.rpc.Status of one session call into the matching SDK error.

    Args:
        status: The status the broker answered for the call.

    Returns:
        The SDK error to raise, decoded as `from_rpc_error` does.
    """
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    reason, metadata = _error_info(status)
    message = status.message or code.name
    cls = _BY_CODE.get(code, ConveyorError)
    if cls is InvalidArgumentError:
        violations = _violations(status)
        return InvalidArgumentError(message, field=violations[0][0] if violations else None,
                                    violations=violations, code=code.name, reason=reason, metadata=metadata)
    return cls(message, code=code.name, reason=reason, metadata=metadata)

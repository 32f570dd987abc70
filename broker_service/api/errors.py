"""Domain errors to gRPC status codes with rich details (google.rpc.Status), in one table."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from broker_service.domain import (
    StaleLeaseError,
    StoreUnavailableError,
    TaskNotFoundError,
    TaskTerminalError,
    WorkflowNotFoundError,
    WorkflowTerminalError,
)

log = logging.getLogger(__name__)
DOMAIN = "conveyor.dev"


class ApiError(Exception):
    """An error with its status code, message and details, ready to send."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str,
                 *details: Any, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.details = details
        self.metadata = metadata or {}

    def to_status(self) -> grpc.Status:
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata)
        packed = []
        for detail in (info, *self.details):
            wrapped = any_pb2.Any()
            wrapped.Pack(detail)
            packed.append(wrapped)
        status = status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)
        return rpc_status.to_status(status)


def invalid_argument(field: str, description: str) -> ApiError:
    """INVALID_ARGUMENT naming the field, with a BadRequest field violation."""
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {description}", "INVALID_FIELD",
                    error_details_pb2.BadRequest(field_violations=[violation]), metadata={"field": field})


def not_found(resource_type: str, name: str) -> ApiError:
    return ApiError(grpc.StatusCode.NOT_FOUND, f"{resource_type} {name!r} not found", "NOT_FOUND",
                    error_details_pb2.ResourceInfo(resource_type=resource_type, resource_name=name))


def unavailable(message: str, retry_after_s: float = 1.0) -> ApiError:
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(
        seconds=int(retry_after_s), nanos=int((retry_after_s % 1) * 1e9)))
    return ApiError(grpc.StatusCode.UNAVAILABLE, message, "UNAVAILABLE", retry)


def from_exception(exc: BaseException, subject: str = "") -> ApiError:
    """Maps any exception raised below the API layer to the status a client should see."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, TaskNotFoundError):
        return not_found("task", subject or str(exc))
    if isinstance(exc, TaskTerminalError):
        return ApiError(grpc.StatusCode.FAILED_PRECONDITION, f"task {subject} has already finished",
                        "TASK_TERMINAL", error_details_pb2.PreconditionFailure(violations=[
                            error_details_pb2.PreconditionFailure.Violation(
                                type="STATE", subject=subject, description="task is in a terminal state")]))
    if isinstance(exc, StaleLeaseError):
        return ApiError(grpc.StatusCode.FAILED_PRECONDITION, f"lease of {subject} is stale", "LEASE_STALE",
                        error_details_pb2.PreconditionFailure(violations=[
                            error_details_pb2.PreconditionFailure.Violation(
                                type="LEASE", subject=subject, description="lease token is not current")]))
    if isinstance(exc, WorkflowNotFoundError):
        return not_found("workflow", subject or str(exc))
    if isinstance(exc, WorkflowTerminalError):
        return ApiError(grpc.StatusCode.FAILED_PRECONDITION, f"workflow {subject} has already finished",
                        "WORKFLOW_TERMINAL", error_details_pb2.PreconditionFailure(violations=[
                            error_details_pb2.PreconditionFailure.Violation(
                                type="STATE", subject=subject, description="workflow is in a final state")]))
    if isinstance(exc, StoreUnavailableError):
        return unavailable(f"task store unavailable: {exc}")
    log.exception("internal error", exc_info=exc)
    return ApiError(grpc.StatusCode.INTERNAL, "internal error", "INTERNAL")


async def abort(context: Any, exc: BaseException, subject: str = "") -> None:
    """Ends the RPC with the mapped status (raises, as grpc.aio's abort does)."""
    await context.abort_with_status(from_exception(exc, subject).to_status())


_Handler = TypeVar("_Handler", bound=Callable[..., Awaitable[Any]])


def unary(handler: _Handler) -> _Handler:
    """Wraps a unary handler so every exception leaves as a mapped status, never a traceback."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: Any) -> Any:
        try:
            return await handler(self, request, context)
        except (ApiError, Exception) as exc:
            await abort(context, exc, _subject(request))
            raise AssertionError("unreachable") from exc  # abort always raises

    return wrapper  # type: ignore[return-value]


def server_stream(handler: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    """The same as `unary`, for server-streaming handlers written as async generators."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            async for item in handler(self, request, context):
                yield item
        except (ApiError, Exception) as exc:  # noqa: BLE001 - mapped, logged if unexpected
            await abort(context, exc, _subject(request))

    return wrapper


def _subject(request: Any) -> str:
    return str(getattr(request, "task_id", "") or getattr(request, "workflow_id", ""))[:200]

"""gRPC statuses, with their rich details, become the SDK's typed errors."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from client_sdk import (
    ConveyorError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from client_sdk._errors import from_rpc_error


def _packed(*messages: Message) -> list[any_pb2.Any]:
    packed = []
    for message in messages:
        value = any_pb2.Any()
        value.Pack(message)
        packed.append(value)
    return packed


def _rpc_error(code: grpc.StatusCode, message: str, *details: Message,
               status_code: int | None = None) -> grpc.aio.AioRpcError:
    """A real grpc error, its trailers built from a google.rpc.Status as a server sends them."""
    status = status_pb2.Status(code=code.value[0] if status_code is None else status_code, message=message,
                               details=_packed(*details))
    trailers = rpc_status.to_status(status).trailing_metadata if details else ()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), message)


def test_invalid_argument_names_the_field_from_bad_request() -> None:
    bad_request = error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field="task.priority", description="must be 0 to 9"),
        error_details_pb2.BadRequest.FieldViolation(field="task.queue", description="empty"),
    ])
    info = error_details_pb2.ErrorInfo(reason="INVALID_FIELD", domain="conveyor", metadata={"field": "task.priority"})
    error = from_rpc_error(_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "task.priority: must be 0 to 9",
                                      bad_request, info))
    assert isinstance(error, InvalidArgumentError)
    assert error.field == "task.priority"
    assert error.violations == (("task.priority", "must be 0 to 9"), ("task.queue", "empty"))
    assert error.code == "INVALID_ARGUMENT"
    assert error.reason == "INVALID_FIELD" and error.metadata == {"field": "task.priority"}
    assert str(error) == "task.priority: must be 0 to 9"


def test_invalid_argument_without_details_has_no_field() -> None:
    error = from_rpc_error(_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad"))
    assert isinstance(error, InvalidArgumentError)
    assert error.field is None and error.violations == () and error.reason == ""


@pytest.mark.parametrize(("code", "cls"), [
    (grpc.StatusCode.NOT_FOUND, NotFoundError),
    (grpc.StatusCode.FAILED_PRECONDITION, FailedPreconditionError),
    (grpc.StatusCode.UNAVAILABLE, UnavailableError),
    (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
    (grpc.StatusCode.OUT_OF_RANGE, InvalidArgumentError),
])
def test_each_status_code_maps_to_its_error(code: grpc.StatusCode, cls: type[ConveyorError]) -> None:
    info = error_details_pb2.ErrorInfo(reason="SOME_REASON", domain="conveyor")
    error = from_rpc_error(_rpc_error(code, "what happened", info))
    assert type(error) is cls
    assert error.code == code.name and error.message == "what happened" and error.reason == "SOME_REASON"


def test_an_unmapped_code_is_a_plain_conveyor_error_keeping_its_code() -> None:
    error = from_rpc_error(_rpc_error(grpc.StatusCode.INTERNAL, ""))
    assert type(error) is ConveyorError
    assert error.code == "INTERNAL" and error.message == "INTERNAL"


def test_details_that_disagree_with_the_status_are_ignored_not_fatal() -> None:
    bad_request = error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field="x", description="y")])
    error = from_rpc_error(_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad", bad_request,
                                      status_code=code_pb2.NOT_FOUND))
    assert isinstance(error, InvalidArgumentError) and error.field is None


def test_garbage_in_the_details_trailer_is_ignored() -> None:
    trailers = grpc.aio.Metadata(("grpc-status-details-bin", b"\xff\x00not a status"))
    raw = grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), trailers, "gone")
    error = from_rpc_error(raw)
    assert isinstance(error, NotFoundError) and error.message == "gone"

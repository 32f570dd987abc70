"""A workflow node's parents' results become its first argument, as its result passing says."""

from __future__ import annotations

import pytest
from conveyor.v1 import worker_service_pb2 as wpb

from worker_sdk._payload import with_parent_results
from worker_sdk._session import job_from_assignment
from worker_sdk.errors import PayloadError

JSON = "application/json"


def test_first_puts_the_one_decoded_result_before_the_own_arguments() -> None:
    assert with_parent_results((10,), 2, ((b"3", JSON),)) == (3, 10)
    assert with_parent_results((), 2, ((b"", JSON),)) == (None,)


def test_list_puts_every_result_in_parent_order_as_one_list() -> None:
    assert with_parent_results(("x",), 3, ((b"1", JSON), (b'{"a": 2}', ""), (b"\x00raw", "text/plain"))) == (
        [1, {"a": 2}, b"\x00raw"], "x")


def test_none_leaves_the_arguments_alone_and_bad_json_is_a_payload_error() -> None:
    assert with_parent_results((1,), 1, ((b"9", JSON),)) == (1,)
    with pytest.raises(PayloadError, match="parent"):
        with_parent_results((), 2, ((b"{nope", JSON),))


def test_an_assignment_carries_its_parents_results_into_the_job() -> None:
    plain = job_from_assignment(wpb.Assignment(task_id="t@q", lease_token=1, name="n"))
    node = job_from_assignment(wpb.Assignment(
        task_id="t@q", lease_token=1, name="n", result_passing=3,
        parent_results=[wpb.ParentResult(task_id="p@q", node="p", payload=b"1", content_type=JSON)]))

    assert (plain.result_passing, plain.parent_results) == (0, ())
    assert (node.result_passing, node.parent_results) == (3, ((b"1", JSON),))

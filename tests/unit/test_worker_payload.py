"""Payloads to arguments and results to payloads: JSON by default, raw bytes otherwise, never pickle."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from worker_sdk._payload import (
    ArgumentCheck,
    check_arguments,
    decode_arguments,
    encode_arguments,
    encode_result,
    is_json,
)
from worker_sdk.errors import PayloadError


def test_json_payload_becomes_args_and_kwargs() -> None:
    assert decode_arguments(b'{"args": [1, "a"], "kwargs": {"k": [2]}}', "application/json") == ((1, "a"), {"k": [2]})


def test_missing_args_or_kwargs_default_to_empty() -> None:
    assert decode_arguments(b'{"kwargs": {"x": 1}}', "application/json") == ((), {"x": 1})
    assert decode_arguments(b'{"args": [3]}', "application/json") == ((3,), {})
    assert decode_arguments(b"", "application/json") == ((), {})


def test_empty_content_type_and_json_variants_count_as_json() -> None:
    assert is_json("") and is_json("application/json; charset=utf-8") and is_json("application/vnd.x+json")
    assert decode_arguments(b'{"args": [1]}', "") == ((1,), {})


def test_non_json_content_type_passes_the_bytes_as_the_single_argument() -> None:
    assert decode_arguments(b"\x00raw", "application/octet-stream") == ((b"\x00raw",), {})


@pytest.mark.parametrize("payload", [b"not json", b"\xff\xfe", b"[1, 2]", b'{"args": {"a": 1}}',
                                     b'{"kwargs": [1]}'])
def test_malformed_json_payloads_are_payload_errors(payload: bytes) -> None:
    with pytest.raises(PayloadError):
        decode_arguments(payload, "application/json")


def test_encode_arguments_round_trips() -> None:
    assert decode_arguments(encode_arguments((1, 2), {"z": None}), "application/json") == ((1, 2), {"z": None})


def test_results_are_compact_json() -> None:
    assert encode_result({"a": [1, 2.5, None]}) == b'{"a":[1,2.5,null]}'
    assert encode_result(None) == b"null"


@pytest.mark.parametrize("value", [object(), {1, 2}, b"bytes", float("nan")])
def test_unserialisable_results_raise_a_clear_type_error(value: object) -> None:
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        encode_result(value)


def test_arguments_that_do_not_bind_are_payload_errors() -> None:
    def add(x: int, y: int) -> int:
        return x + y

    check_arguments(add, (1,), {"y": 2})
    with pytest.raises(PayloadError, match="missing a required argument"):
        check_arguments(add, (1,), {})
    with pytest.raises(PayloadError, match="unexpected keyword"):
        check_arguments(add, (1, 2), {"z": 3})


def _positional(a, b=2, /, c=3):  # type: ignore[no-untyped-def]
    return a


def _variadic(a, *rest, flag=False, **extra):  # type: ignore[no-untyped-def]
    return a


def _keyword_only(a, *, required):  # type: ignore[no-untyped-def]
    return a


def _nothing():  # type: ignore[no-untyped-def]
    return None


@pytest.mark.parametrize("fn", [_positional, _variadic, _keyword_only, _nothing, len])
@pytest.mark.parametrize(("args", "kwargs"), [((), {}), ((1,), {}), ((1, 2), {}), ((1, 2, 3), {}), ((1, 2, 3, 4), {}),
                                              ((1,), {"c": 1}), ((1,), {"required": 1}), ((), {"a": 1}),
                                              ((1,), {"zzz": 1})])
def test_the_argument_check_agrees_with_the_signature(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    check = ArgumentCheck(fn)
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError:
        binds = False
    except ValueError:  # no signature: the call decides
        binds = True
    else:
        binds = True
    if binds:
        check(args, kwargs)
    else:
        with pytest.raises(PayloadError, match="signature"):
            check(args, kwargs)

"""Task payloads to call arguments, and return values to result payloads (JSON, never pickle)."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

from worker_sdk.errors import PayloadError

JSON_CONTENT_TYPE = "application/json"
_OPEN_BRACE = ord("{")
# One encoder for every result: json.dumps with options builds a new one per call.
_RESULT_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def is_json(content_type: str) -> bool:
    """True for JSON media types (an empty content type counts as the JSON default)."""
    if content_type == JSON_CONTENT_TYPE:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("", JSON_CONTENT_TYPE) or media.endswith("+json")


def decode_arguments(payload: bytes, content_type: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Turns a payload into (args, kwargs).

    A JSON payload is ``{"args": [...], "kwargs": {...}}`` (both optional; an empty payload
    means no arguments). Any other content type passes the raw bytes as the one positional
    argument.

    Raises:
        PayloadError: The JSON is malformed or not of that shape.
    """
    if not is_json(content_type):
        return (payload,), {}
    try:
        if payload[:1] and payload[0] == _OPEN_BRACE:  # the usual UTF-8 object: skip encoding detection
            document = json.loads(payload.decode())
        elif not payload.strip():
            return (), {}
        else:
            document = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError(f"payload is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise PayloadError(f'JSON payload must be an object {{"args": [...], "kwargs": {{...}}}}, '
                           f"got {type(document).__name__}")
    args = document.get("args", [])
    kwargs = document.get("kwargs", {})
    if not isinstance(args, list):
        raise PayloadError(f'payload "args" must be a list, got {type(args).__name__}')
    if not isinstance(kwargs, dict):
        raise PayloadError(f'payload "kwargs" must be an object, got {type(kwargs).__name__}')
    return tuple(args), kwargs


RESULT_PASSING_FIRST = 2
RESULT_PASSING_LIST = 3


def with_parent_results(args: tuple[Any, ...], passing: int,
                        results: tuple[tuple[bytes, str], ...]) -> tuple[Any, ...]:
    """A workflow node's arguments: its parents' decoded results first, as `passing` says.

    FIRST puts the one parent's result first; LIST puts the list of every parent's result
    (in the node's `parents` order) first; anything else leaves the arguments alone. A JSON
    result is decoded (an empty one is None); any other content type stays bytes.

    Raises:
        PayloadError: A JSON result is malformed.
    """
    if passing == RESULT_PASSING_FIRST:
        return (_decode_result(*results[0]) if results else None, *args)
    if passing == RESULT_PASSING_LIST:
        return ([_decode_result(*r) for r in results], *args)
    return args


def _decode_result(payload: bytes, content_type: str) -> Any:
    if not is_json(content_type):
        return payload
    if not payload.strip():
        return None
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError(f"a parent's result is not valid JSON: {exc}") from None


def encode_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """The inverse of :func:`decode_arguments` for JSON (used by tests and examples)."""
    return json.dumps({"args": list(args), "kwargs": kwargs}, separators=(",", ":")).encode()


def encode_result(value: Any) -> bytes:
    """Serialises a task's return value as JSON.

    Raises:
        TypeError: The value is not JSON-serialisable (the message says what was found).
    """
    try:
        return _RESULT_ENCODER.encode(value).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(f"task result is not JSON-serialisable ({type(value).__name__}): {exc}") from None


class ArgumentCheck:
    """Checks call arguments against one function's signature, inspected once.

    Positional arguments alone are checked by counting them when the signature allows it
    (no keyword-only parameter without a default); anything else goes through
    ``Signature.bind``.
    """

    __slots__ = ("_fewest", "_most", "_signature")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fewest = 0
        self._most = -1  # no counting shortcut
        try:
            self._signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):  # builtins without a signature: let the call decide
            self._signature = None
            return
        kinds = inspect.Parameter
        parameters = self._signature.parameters.values()
        if any(p.kind is kinds.KEYWORD_ONLY and p.default is kinds.empty for p in parameters):
            return
        positional = [p for p in parameters if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)]
        self._fewest = sum(1 for p in positional if p.default is kinds.empty)
        variadic = any(p.kind is kinds.VAR_POSITIONAL for p in parameters)
        self._most = 1 << 30 if variadic else len(positional)

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Checks that `args` and `kwargs` bind to the signature.

        Raises:
            PayloadError: They do not (a retry would fail the same way).
        """
        if self._signature is None or (not kwargs and self._fewest <= len(args) <= self._most):
            return
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise PayloadError(f"arguments do not match the task's signature: {exc}") from None


def check_arguments(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Checks that the arguments bind to `fn`'s signature before it runs (inspects it each time).

    Raises:
        PayloadError: They do not (a retry would fail the same way).
    """
    ArgumentCheck(fn)(args, kwargs)

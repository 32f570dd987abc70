"""Task definitions: the `task` decorator, its frozen options and the signatures it builds."""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, ParamSpec, TypedDict, TypeVar, Unpack, overload

from client_sdk._schedule_models import SCHEDULE_ID_PATTERN, MissedTicks, Trigger

__all__ = ["OptionOverrides", "Signature", "TaskDefinition", "TaskOptions", "signature", "task"]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_QUEUE = "default"


def _check_seconds(name: str, value: float | None, *, allow_zero: bool = True) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number "
                         f"of seconds, got {value!r}")


def _check_int(name: str, value: int, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"{low} to {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """How and where a task runs. Durations are in seconds; None leaves the broker default.

    The broker validates every limit again and answers INVALID_ARGUMENT for what it refuses;
    the checks here only catch what cannot be sent at all, as early as possible.

    Attributes:
        queue: Queue to submit to.
        priority: 0 (lowest) to 9 (highest); higher runs first.
        max_attempts: Attempts in all, the first one included; 1 means never retry.
        retry_backoff: Delay before the first retry.
        retry_backoff_max: Upper bound of any retry delay.
        retry_jitter: Fraction of each retry delay that is randomised away, 0 to 1.
        timeout: Longest one attempt may run; None for no limit.
        lease: Lease duration (how long a silent worker keeps the task); None for the broker's.
        schedule_to_start: A task not started within this time of its scheduled time ends
            EXPIRED instead of running late; None for no limit.
        result_ttl: How long the result is kept after the task finishes; None for the broker's.
        dont_retry_on: Exception types that fail the task for good (used by the worker).
        delay: Run no sooner than this many seconds after submission.
        run_at: Run no sooner than this time (timezone-aware). Exclusive with ``delay``.
        headers: String headers carried to the worker.
        idempotency_key: Submitting again with this key (in this queue, within
            ``idempotency_ttl``) stores nothing and answers the first task: client retries are safe.
        idempotency_ttl: Seconds the idempotency key is remembered; None for the broker's (1 day).
        unique_key: While a task with this key (in this queue) waits or runs, submitting another
            answers that task instead of queuing a copy.
        concurrency_key: Tasks with this key (in this queue) run at most ``concurrency_limit``
            at once; the others wait without holding back the rest of the queue.
        concurrency_limit: Most tasks with ``concurrency_key`` running at once, 1 to 10,000.
        inline: The worker runs this sync function on its event loop rather than on a thread
            (used by the worker; see ``task``).
    """

    queue: str = DEFAULT_QUEUE
    priority: int = 0
    max_attempts: int = 3
    retry_backoff: float = 1.0
    retry_backoff_max: float = 600.0
    retry_jitter: float = 0.0
    timeout: float | None = None
    lease: float | None = None
    schedule_to_start: float | None = None
    result_ttl: float | None = None
    dont_retry_on: tuple[type[BaseException], ...] = ()
    delay: float | None = None
    run_at: datetime | None = None
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)
    idempotency_key: str | None = None
    idempotency_ttl: float | None = None
    unique_key: str | None = None
    concurrency_key: str | None = None
    concurrency_limit: int = 1
    inline: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.queue, str) or not self.queue:
            raise ValueError(f"queue must be a non-empty string, got {self.queue!r}")
        _check_int("priority", self.priority, 0, 9)
        _check_int("max_attempts", self.max_attempts, 1)
        for name in ("retry_backoff", "retry_backoff_max", "delay"):
            _check_seconds(name, getattr(self, name))
        for name in ("timeout", "lease", "schedule_to_start", "result_ttl"):
            _check_seconds(name, getattr(self, name), allow_zero=False)
        _check_seconds("retry_jitter", self.retry_jitter)
        if self.retry_jitter > 1:
            raise ValueError(f"retry_jitter must be 0 to 1, got {self.retry_jitter!r}")
        if self.run_at is not None:
            if not isinstance(self.run_at, datetime):
                raise TypeError(f"run_at must be a datetime, not {type(self.run_at).__name__}")
            if self.run_at.tzinfo is None or self.run_at.utcoffset() is None:
                raise ValueError("run_at must be timezone-aware (e.g. datetime.now(timezone.utc))")
            if self.delay is not None:
                raise ValueError("give either delay or run_at, not both")
        _check_keys(self)
        if not isinstance(self.inline, bool):
            raise TypeError(f"inline must be True or False, got {self.inline!r}")
        object.__setattr__(self, "dont_retry_on", _exception_types(self.dont_retry_on))
        object.__setattr__(self, "headers", _headers(self.headers))

    def replace(self, **overrides: Unpack[OptionOverrides]) -> TaskOptions:
        """Returns a copy with some options changed.

        Setting ``delay`` clears ``run_at`` and the other way round, so a schedule can be
        replaced without first unsetting the old one.

        Args:
            **overrides: Options to change, by name.

        Returns:
            The new options.

        Raises:
            TypeError: If an option name is unknown.
            ValueError: If a value is out of range.
        """
        changes: dict[str, Any] = dict(overrides)
        if changes.get("delay") is not None and "run_at" not in changes:
            changes["run_at"] = None
        if changes.get("run_at") is not None and "delay" not in changes:
            changes["delay"] = None
        return dataclasses.replace(self, **changes)


def _check_keys(options: TaskOptions) -> None:
    for name in ("idempotency_key", "unique_key", "concurrency_key"):
        value = getattr(options, name)
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{name} must be a non-empty string or None, got {value!r}")
    _check_seconds("idempotency_ttl", options.idempotency_ttl, allow_zero=False)
    _check_int("concurrency_limit", options.concurrency_limit, 1, 10_000)


def _exception_types(value: Any) -> tuple[type[BaseException], ...]:
    types = (value,) if isinstance(value, type) else tuple(value)
    for item in types:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise TypeError(f"dont_retry_on must hold exception types, got {item!r}")
    return types


def _headers(value: Mapping[str, str]) -> dict[str, str]:
    headers = dict(value)
    for key, item in headers.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise TypeError(f"headers must map str to str, got {key!r}: {item!r}")
    return headers


class _SubmitOverrides(TypedDict, total=False):
    priority: int
    max_attempts: int
    retry_backoff: float
    retry_backoff_max: float
    retry_jitter: float
    timeout: float | None
    lease: float | None
    schedule_to_start: float | None
    result_ttl: float | None
    dont_retry_on: tuple[type[BaseException], ...]
    delay: float | None
    run_at: datetime | None
    headers: Mapping[str, str]
    idempotency_key: str | None
    idempotency_ttl: float | None
    unique_key: str | None
    concurrency_key: str | None
    concurrency_limit: int


class OptionOverrides(_SubmitOverrides, total=False):
    """Keyword arguments accepted by ``with_options``: any field of `TaskOptions`."""

    queue: str


@dataclass(frozen=True, slots=True)
class Signature:
    """A task call ready to submit: a task name, its arguments and its options.

    Arguments are encoded as JSON (``{"args": [...], "kwargs": {...}}``) when submitted.

    Attributes:
        name: The task name a worker resolves to a function.
        args: Positional arguments.
        kwargs: Keyword arguments.
        options: Where and how to run it.
        immutable: In a workflow, True means the task is not handed its parents' results
            (built by ``.si()``); False means they come first in its arguments.
    """

    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    options: TaskOptions = field(default_factory=TaskOptions)
    immutable: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"task name must be a non-empty string, got {self.name!r}")

    def with_options(self, **overrides: Unpack[OptionOverrides]) -> Signature:
        """Returns a copy of this signature with some options changed.

        Args:
            **overrides: Any field of `TaskOptions`, e.g. ``queue``, ``priority``, ``delay``
                (seconds), ``run_at`` (datetime) or ``headers``.

        Returns:
            The new signature.
        """
        return dataclasses.replace(self, options=self.options.replace(**overrides))

    def si(self) -> Signature:
        """Returns an immutable copy: in a workflow it is called with its own arguments only,
        never handed its parents' results.

        Returns:
            The new signature.
        """
        return dataclasses.replace(self, immutable=True)


def signature(name: str, /, *args: Any, **kwargs: Any) -> Signature:
    """Builds a signature from a bare task name, for tasks defined elsewhere.

    Arguments are not type-checked (there is no function to check them against). The queue is
    ``"default"``; change it with ``.with_options(queue=...)``.

    Args:
        name: The task name.
        *args: Positional arguments of the task.
        **kwargs: Keyword arguments of the task.

    Returns:
        The signature.
    """
    return Signature(name, tuple(args), dict(kwargs))


def _positional_counts(parameters: inspect.Signature) -> tuple[int, int] | None:
    """(required, most) positional arguments when every parameter is a plain positional one
    (no keyword-only, no *args or **kwargs), else None."""
    plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    values = list(parameters.parameters.values())
    if any(p.kind not in plain for p in values):
        return None
    return sum(p.default is inspect.Parameter.empty for p in values), len(values)


class TaskDefinition(Generic[P, R]):
    """A function registered as a task, with its name and default options.

    Calling it runs the function locally; ``.s()`` builds a `Signature` to submit.

    Attributes:
        name: The task name (default: the function's ``__module__`` + ``"."`` + ``__qualname__``).
        fn: The wrapped function.
        options: Default options of every submission.
    """

    def __init__(self, fn: Callable[P, R], *, name: str | None = None,
                 options: TaskOptions | None = None, schedule: Trigger | None = None) -> None:
        """Wraps a function.

        Args:
            fn: The function to run.
            name: The task name; default ``fn.__module__ + "." + fn.__qualname__``.
            options: Default options; default ``TaskOptions()``.
            schedule: When to submit it periodically (a worker running it puts the schedule when
                it starts); None for no schedule.

        Raises:
            TypeError: If ``fn`` is not callable.
            ValueError: If the schedule needs an explicit id (the task name is not a valid one).
        """
        if not callable(fn):
            raise TypeError(f"task() needs a callable, got {fn!r}")
        self.fn = fn
        self.name = name or f"{fn.__module__}.{fn.__qualname__}"
        if not isinstance(self.name, str):
            raise TypeError(f"task name must be a string, got {self.name!r}")
        self.options = options if options is not None else TaskOptions()
        self.schedule = schedule
        if schedule is not None and schedule.schedule_id is None and not SCHEDULE_ID_PATTERN.fullmatch(self.name):
            raise ValueError(f"task {self.name!r}: its name is not a valid schedule id; give schedule_id=")
        self._parameters = inspect.signature(fn)
        self._positional_counts = _positional_counts(self._parameters)
        if schedule is not None:
            try:
                self._parameters.bind()
            except TypeError:
                raise ValueError(f"task {self.name!r}: a scheduled task is submitted without arguments, "
                                 "so none of its parameters may be required") from None
        for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
            if hasattr(fn, attr):
                setattr(self, attr, getattr(fn, attr))
        self.__wrapped__ = fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Runs the function here, in this process."""
        return self.fn(*args, **kwargs)

    def s(self, *args: P.args, **kwargs: P.kwargs) -> Signature:
        """Builds a signature of this task, checking the arguments against the function.

        Args:
            *args: Positional arguments of the task.
            **kwargs: Keyword arguments of the task.

        Returns:
            The signature, with this task's options.

        In a workflow the task is handed its parent's result (or the list of its parents'
        results) as its first argument, so that argument may be left out here.

        Raises:
            TypeError: If the arguments do not fit the function's parameters.
        """
        return self._signature(args, kwargs, room_for_parent=True)

    def _signature(self, args: tuple[Any, ...], kwargs: dict[str, Any], *, room_for_parent: bool = False,
                   immutable: bool = False) -> Signature:
        """A checked signature; `room_for_parent` also accepts arguments that leave the first
        parameter to a workflow parent's result."""
        counts = self._positional_counts
        if counts is not None and not kwargs and counts[0] <= len(args) <= counts[1]:
            # plain positional parameters called positionally: counting them is the whole check
            return Signature(self.name, args, {}, self.options, immutable=immutable)
        try:
            self._parameters.bind(*args, **kwargs)
        except TypeError as exc:
            try:
                if not room_for_parent:
                    raise
                self._parameters.bind(None, *args, **kwargs)
            except TypeError:
                raise TypeError(f"task {self.name!r}: {exc}") from None
        return Signature(self.name, tuple(args), dict(kwargs), self.options, immutable=immutable)

    def si(self, *args: P.args, **kwargs: P.kwargs) -> Signature:
        """Builds an immutable signature: in a workflow it gets its own arguments only, never
        its parents' results.

        Args:
            *args: Positional arguments of the task.
            **kwargs: Keyword arguments of the task.

        Returns:
            The signature, with this task's options.

        Raises:
            TypeError: If the arguments do not fit the function's parameters.
        """
        return self._signature(args, kwargs, immutable=True)

    def with_options(self, **overrides: Unpack[OptionOverrides]) -> TaskDefinition[P, R]:
        """Returns a copy of this task with some options changed.

        Args:
            **overrides: Any field of `TaskOptions`, e.g. ``queue``, ``priority``, ``delay``
                (seconds), ``run_at`` (datetime) or ``headers``.

        Returns:
            The new definition; this one is unchanged.
        """
        return TaskDefinition(self.fn, name=self.name, options=self.options.replace(**overrides),
                              schedule=self.schedule)

    @property
    def schedule_id(self) -> str | None:
        """The id of this task's schedule (default: the task name), or None without a schedule."""
        if self.schedule is None:
            return None
        return self.schedule.schedule_id or self.name

    def __repr__(self) -> str:
        return f"<TaskDefinition {self.name!r} queue={self.options.queue!r}>"


@overload
def task(fn: Callable[P, R], /) -> TaskDefinition[P, R]: ...


@overload
def task(
    *,
    name: str | None = None,
    queue: str = DEFAULT_QUEUE,
    priority: int = 0,
    max_attempts: int = 3,
    retry_backoff: float = 1.0,
    retry_backoff_max: float = 600.0,
    retry_jitter: float = 0.0,
    timeout: float | None = None,
    lease: float | None = None,
    schedule_to_start: float | None = None,
    result_ttl: float | None = None,
    dont_retry_on: tuple[type[BaseException], ...] = (),
    idempotency_key: str | None = None,
    idempotency_ttl: float | None = None,
    unique_key: str | None = None,
    concurrency_key: str | None = None,
    concurrency_limit: int = 1,
    inline: bool = False,
    cron: str | None = None,
    every: float | timedelta | None = None,
    timezone: str = "",
    missed: MissedTicks | str = MissedTicks.FIRE_ONCE,
    schedule_id: str | None = None,
) -> Callable[[Callable[P, R]], TaskDefinition[P, R]]: ...


def task(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    queue: str = DEFAULT_QUEUE,
    priority: int = 0,
    max_attempts: int = 3,
    retry_backoff: float = 1.0,
    retry_backoff_max: float = 600.0,
    retry_jitter: float = 0.0,
    timeout: float | None = None,
    lease: float | None = None,
    schedule_to_start: float | None = None,
    result_ttl: float | None = None,
    dont_retry_on: tuple[type[BaseException], ...] = (),
    idempotency_key: str | None = None,
    idempotency_ttl: float | None = None,
    unique_key: str | None = None,
    concurrency_key: str | None = None,
    concurrency_limit: int = 1,
    inline: bool = False,
    cron: str | None = None,
    every: float | timedelta | None = None,
    timezone: str = "",
    missed: MissedTicks | str = MissedTicks.FIRE_ONCE,
    schedule_id: str | None = None,
) -> TaskDefinition[P, R] | Callable[[Callable[P, R]], TaskDefinition[P, R]]:
    """Registers a function as a task; works bare (``@task``) or with options (``@task(...)``).

    Args:
        fn: The function, when used bare.
        name: Task name; default the function's ``__module__`` + ``"."`` + ``__qualname__``.
        queue: Queue the task is submitted to.
        priority: 0 (lowest) to 9 (highest).
        max_attempts: Attempts in all, the first one included.
        retry_backoff: Seconds before the first retry.
        retry_backoff_max: Upper bound of any retry delay, in seconds.
        retry_jitter: Fraction of each retry delay randomised away, 0 to 1.
        timeout: Longest one attempt may run, in seconds; None for no limit.
        lease: Lease duration in seconds; None for the broker default.
        schedule_to_start: Seconds after its scheduled time by which the task must start,
            else it ends EXPIRED; None for no limit.
        result_ttl: Seconds the result is kept; None for the broker default.
        dont_retry_on: Exception types that fail the task at once, without retries.
        idempotency_key: Every submit of this definition shares the key: the first one within
            ``idempotency_ttl`` is stored, the others answer it (at most once per TTL). A key per
            submission is given per call: ``task.s(...).with_options(idempotency_key="order-7")``.
        idempotency_ttl: Seconds the idempotency key is remembered; None for the broker's (1 day).
        unique_key: At most one task of this definition waits or runs at a time: a submit while
            one does answers it (``handle.duplicate``). Per call, use ``with_options``.
        concurrency_key: Runs at most ``concurrency_limit`` tasks with this key at once, e.g. a
            customer id given per call with ``with_options(concurrency_key=...)``.
        concurrency_limit: Most tasks with ``concurrency_key`` running at once.
        inline: Run this sync function on the worker's event loop instead of handing it to a
            thread and its result back (about 0.1 ms less per task on a busy 2-core machine).
            Only for short functions: while one runs the worker does nothing else (no
            heartbeat, no other task's outcome). A run that takes longer than 0.1 s sends the
            task to threads for the rest of the worker's life, with a warning. An attempt with
            an execution timeout runs on a thread (the loop must be free to end it).
        cron: Submit the task (without arguments) on this cron schedule: five fields, or six with
            seconds last. A worker running the task puts the schedule when it starts.
        every: Submit the task every so often instead (a timedelta, or seconds; at least 1 s).
        timezone: IANA zone ``cron`` is read in; empty means UTC.
        missed: What the schedule does with missed ticks: ``"fire-once"``, ``"skip"`` or ``"catch-up"``.
        schedule_id: The schedule's id; default the task name.

    Returns:
        The `TaskDefinition` (bare use), or a decorator that makes one.

    Raises:
        ValueError: If an option is out of range.
    """
    options = TaskOptions(
        queue=queue, priority=priority, max_attempts=max_attempts, retry_backoff=retry_backoff,
        retry_backoff_max=retry_backoff_max, retry_jitter=retry_jitter, timeout=timeout, lease=lease,
        schedule_to_start=schedule_to_start, result_ttl=result_ttl, dont_retry_on=dont_retry_on,
        idempotency_key=idempotency_key, idempotency_ttl=idempotency_ttl, unique_key=unique_key,
        concurrency_key=concurrency_key, concurrency_limit=concurrency_limit, inline=inline,
    )
    trigger = None
    if cron is not None or every is not None:
        trigger = Trigger.of(cron=cron, every=every, timezone=timezone, missed=missed, schedule_id=schedule_id)

    def decorate(function: Callable[P, R]) -> TaskDefinition[P, R]:
        if inline and inspect.iscoroutinefunction(function):
            raise TypeError("inline is for sync functions: an async one runs on the worker's loop already")
        return TaskDefinition(function, name=name, options=options, schedule=trigger)

    return decorate if fn is None else decorate(fn)

"""The task decorator, its options and the signatures it builds."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from client_sdk import Signature, TaskDefinition, TaskOptions, signature, task


@task
def add(x: int, y: int = 1) -> int:
    """Adds."""
    return x + y


@task(name="custom.mul", queue="math", priority=7, max_attempts=5, timeout=30.0, lease=10.0,
      dont_retry_on=(ValueError,))
def mul(x: int, *, by: int) -> int:
    return x * by


def test_bare_decorator_names_the_task_after_module_and_qualname() -> None:
    assert isinstance(add, TaskDefinition)
    assert add.name == f"{__name__}.add"
    assert add.options == TaskOptions()
    assert add.fn.__name__ == "add"
    assert add.__doc__ == "Adds."


def test_decorator_with_arguments_sets_name_and_options() -> None:
    assert mul.name == "custom.mul"
    assert mul.options.queue == "math"
    assert mul.options.priority == 7
    assert mul.options.max_attempts == 5
    assert mul.options.timeout == 30.0
    assert mul.options.lease == 10.0
    assert mul.options.dont_retry_on == (ValueError,)


def test_calling_a_definition_runs_the_function_locally() -> None:
    assert add(2, 3) == 5
    assert mul(2, by=4) == 8


def test_s_binds_arguments_into_a_signature() -> None:
    sig = add.s(1, y=2)
    assert sig == Signature(add.name, (1,), {"y": 2}, add.options)


def test_s_may_leave_the_first_argument_to_a_workflow_parent_but_si_may_not() -> None:
    assert add.s(y=2) == Signature(add.name, (), {"y": 2}, add.options)
    with pytest.raises(TypeError, match="add"):
        add.si(y=2)  # type: ignore[call-arg]
    assert add.si(1, 2).immutable and not add.s(1, 2).immutable


@pytest.mark.parametrize(("args", "kwargs"), [((1, 2, 3), {}), ((1,), {"z": 2}), ((1,), {"x": 1})])
def test_s_refuses_arguments_that_do_not_fit_the_function(args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    with pytest.raises(TypeError, match="add"):
        add.s(*args, **kwargs)  # type: ignore[arg-type]


def test_s_refuses_a_keyword_only_argument_given_positionally() -> None:
    with pytest.raises(TypeError):
        mul.s(2, 3)  # type: ignore[call-arg]


def test_options_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        add.options.queue = "other"  # type: ignore[misc]


def test_with_options_returns_a_new_definition_and_leaves_the_old_one() -> None:
    urgent = add.with_options(queue="urgent", priority=9, delay=2.5, headers={"trace": "abc"})
    assert urgent.name == add.name and urgent.fn is add.fn
    assert urgent.options.queue == "urgent" and urgent.options.priority == 9
    assert urgent.options.delay == 2.5 and urgent.options.headers == {"trace": "abc"}
    assert add.options == TaskOptions()
    assert urgent.s(1).options is urgent.options


def test_setting_delay_clears_run_at_and_the_other_way_round() -> None:
    at = datetime(2030, 1, 1, tzinfo=UTC)
    timed = add.with_options(run_at=at)
    assert timed.options.run_at == at
    delayed = timed.with_options(delay=5)
    assert delayed.options.run_at is None and delayed.options.delay == 5
    assert delayed.with_options(run_at=at).options.delay is None


def test_delay_and_run_at_together_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        TaskOptions(delay=1, run_at=datetime(2030, 1, 1, tzinfo=UTC))


def test_naive_run_at_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        add.with_options(run_at=datetime(2030, 1, 1))


def test_unknown_option_is_refused() -> None:
    with pytest.raises(TypeError):
        add.with_options(colour="red")  # type: ignore[call-arg]


@pytest.mark.parametrize(("option", "value", "error"), [
    ("priority", 10, ValueError),
    ("priority", -1, ValueError),
    ("priority", 1.5, TypeError),
    ("max_attempts", 0, ValueError),
    ("delay", -1.0, ValueError),
    ("timeout", 0, ValueError),
    ("retry_jitter", 1.5, ValueError),
    ("retry_backoff", float("nan"), ValueError),
    ("queue", "", ValueError),
    ("headers", {"a": 1}, TypeError),
    ("dont_retry_on", ("ValueError",), TypeError),
    ("inline", "yes", TypeError),
])
def test_options_that_cannot_be_sent_are_refused_early(option: str, value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=option):
        TaskOptions(**{option: value})  # type: ignore[arg-type]


def test_decorator_refuses_bad_options_at_definition_time() -> None:
    with pytest.raises(ValueError, match="priority"):
        task(priority=42)


def test_inline_is_for_sync_functions_only() -> None:
    assert task(inline=True)(lambda: 1).options.inline

    async def on_the_loop_already() -> int:
        return 1

    with pytest.raises(TypeError, match="inline is for sync functions"):
        task(inline=True)(on_the_loop_already)


def test_signature_from_a_bare_name_uses_the_default_queue() -> None:
    sig = signature("other.service.task", 1, "two", three=3)
    assert sig.name == "other.service.task"
    assert sig.args == (1, "two") and sig.kwargs == {"three": 3}
    assert sig.options.queue == "default"


def test_signature_accepts_an_argument_called_name() -> None:
    assert signature("t", name="x").kwargs == {"name": "x"}


def test_signature_with_options_changes_only_options() -> None:
    sig = signature("t", 1).with_options(queue="q", priority=2)
    assert sig.args == (1,) and sig.options.queue == "q" and sig.options.priority == 2


def test_signature_needs_a_name() -> None:
    with pytest.raises(ValueError):
        signature("")

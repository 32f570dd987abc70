"""The client subcommands of `conveyor`: enqueue, get, wait, cancel, list, queue, schedule and workflow,
printing JSON lines."""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from client_sdk import _convert, _workflow_cli
from client_sdk._client import Client
from client_sdk._errors import (
    ConveyorError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    TaskTimeoutError,
    UnavailableError,
)
from client_sdk._models import TaskInfo, TaskState
from client_sdk._queues import QueueInfo
from client_sdk._schedule_models import MissedTicks, ScheduleInfo
from client_sdk._task import signature
from client_sdk._workflow import WorkflowTimeoutError

__all__ = ["COMMANDS", "main"]

COMMANDS = ("enqueue", "get", "wait", "cancel", "list", "queue", "schedule", "workflow")
DEFAULT_BROKER = "localhost:50051"
BROKER_ENV = "CONVEYOR_BROKER"

EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_TIMEOUT = 4

_EPILOG = f"""\
Output is one JSON object per line on stdout; errors are one JSON object on stderr.
The broker address comes from --broker, else ${BROKER_ENV}, else {DEFAULT_BROKER}.
Exit codes: 0 ok; 1 the task failed, was cancelled or expired (or the broker answered with an
unexpected error); 2 bad input or usage (including an unknown task id); 3 broker unavailable;
4 a wait timed out before the task finished.
"""


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def _body(data: bytes, content_type: str) -> dict[str, Any]:
    if not data:
        return {}
    if _convert.is_json(content_type):
        try:
            return {"json": json.loads(data)}
        except ValueError:
            pass
    return {"base64": base64.b64encode(data).decode("ascii"), "content_type": content_type}


def info_json(info: TaskInfo) -> dict[str, Any]:
    """The JSON form of a task printed by the CLI (payload and result decoded when JSON)."""
    out: dict[str, Any] = {
        "id": info.id, "queue": info.queue, "name": info.name, "state": info.state.label,
        "attempt": info.attempt, "max_attempts": info.max_attempts, "priority": info.priority,
    }
    if info.headers:
        out["headers"] = dict(info.headers)
    if payload := _body(info.payload, info.content_type):
        out["payload"] = payload
    for name in ("created_at", "scheduled_at", "started_at", "finished_at", "start_deadline",
                 "execution_timeout", "lease_duration", "result_ttl"):
        value = getattr(info, name)
        if value is not None:
            out[name] = _jsonable(value)
    if info.state is TaskState.SUCCEEDED:
        out["result"] = _body(info.result, info.result_content_type) or {"json": None}
    if info.error is not None:
        out["error"] = {"type": info.error.type, "message": info.error.message,
                        "traceback": info.error.traceback, "retryable": info.error.retryable}
    for name in ("reason", "worker_id", "progress_message", "idempotency_key", "unique_key", "concurrency_key",
                 "schedule_id"):
        if getattr(info, name):
            out[name] = getattr(info, name)
    if info.concurrency_key:
        out["concurrency_limit"] = info.concurrency_limit
    if info.progress:
        out["progress"] = info.progress
    if info.cancel_requested:
        out["cancel_requested"] = True
    out.update(_workflow_cli.links_json(info))
    return out


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, ensure_ascii=False), flush=True)


def _fail(exit_code: int, kind: str, message: str, /, **extra: Any) -> int:
    print(json.dumps({"error": kind, "message": message, **extra}, ensure_ascii=False),
          file=sys.stderr, flush=True)
    return exit_code


def _terminal_exit(info: TaskInfo) -> int:
    return EXIT_OK if info.state is TaskState.SUCCEEDED else EXIT_TASK_FAILED


def _json_arg(text: str | None, kind: type, flag: str) -> Any:
    if text is None:
        return kind()
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{flag}: not valid JSON: {exc}") from None
    if not isinstance(value, kind):
        raise ValueError(f"{flag}: expected a JSON {'array' if kind is list else 'object'}")
    return value


def _headers(items: Sequence[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--header {item!r}: expected KEY=VALUE")
        headers[key] = value
    return headers


def _enqueue(client: Client, args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {"queue": args.queue, "priority": args.priority,
                                 "headers": _headers(args.header)}
    if args.delay is not None:
        overrides["delay"] = args.delay
    if args.max_attempts is not None:
        overrides["max_attempts"] = args.max_attempts
    for name in ("idempotency_key", "idempotency_ttl", "unique_key", "concurrency_key", "concurrency_limit"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    sig = signature(args.name, *_json_arg(args.args, list, "--args"),
                    **_json_arg(args.kwargs, dict, "--kwargs")).with_options(**overrides)
    handle = client.enqueue(sig)
    line: dict[str, Any] = {"id": handle.id, "queue": handle.queue, "name": args.name}
    if handle.duplicate:
        line["duplicate"] = True
    _emit(line)
    if not args.wait:
        return EXIT_OK
    info = client.wait(handle.id, args.timeout)
    _emit(info_json(info))
    return _terminal_exit(info)


def _get(client: Client, args: argparse.Namespace) -> int:
    _emit(info_json(client.get(args.id)))
    return EXIT_OK


def _wait(client: Client, args: argparse.Namespace) -> int:
    info = client.wait(args.id, args.timeout)
    _emit(info_json(info))
    return _terminal_exit(info)


def _cancel(client: Client, args: argparse.Namespace) -> int:
    state = client.cancel(args.id, args.reason)
    _emit({"id": args.id, "state": state.label})
    return EXIT_OK


def _list(client: Client, args: argparse.Namespace) -> int:
    for count, info in enumerate(client.list(args.queue, args.state, args.page_size), start=1):
        _emit(info_json(info))
        if args.limit and count >= args.limit:
            break
    return EXIT_OK


def queue_json(info: QueueInfo) -> dict[str, Any]:
    """The JSON form of a queue printed by the CLI."""
    limits = info.limits
    return {"name": info.name,
            "limits": {"max_running": limits.max_running, "rate_per_second": limits.rate_per_second,
                       "rate_burst": limits.rate_burst},
            "counts": {name: getattr(info, name) for name in ("scheduled", "queued", "running", "pending",
                                                               "succeeded", "failed", "cancelled", "expired")}}


def _queue(client: Client, args: argparse.Namespace) -> int:
    if args.action == "limits":
        info = client.set_queue_limits(args.queue, max_running=args.max_running, rate_per_second=args.rate,
                                       rate_burst=args.burst)
        _emit(queue_json(info))
    elif args.action == "show":
        _emit(queue_json(client.get_queue(args.queue)))
    else:
        for info in client.list_queues():
            _emit(queue_json(info))
    return EXIT_OK


def schedule_json(info: ScheduleInfo) -> dict[str, Any]:
    """The JSON form of a schedule printed by the CLI."""
    out: dict[str, Any] = {"id": info.id, "task": info.task_name, "queue": info.queue}
    if info.cron is not None:
        out["cron"] = info.cron
        out["timezone"] = info.timezone or "UTC"
    if info.every is not None:
        out["every"] = info.every.total_seconds()
    out["missed"] = info.missed.label
    out["paused"] = info.paused
    if payload := _body(info.payload, info.content_type):
        out["payload"] = payload
    for name in ("next_fire_at", "last_fire_at", "created_at", "updated_at"):
        value = getattr(info, name)
        if value is not None:
            out[name] = _jsonable(value)
    out["fire_count"] = info.fire_count
    if info.last_task_id:
        out["last_task_id"] = info.last_task_id
    if info.description:
        out["description"] = info.description
    return out


def _schedule_create(client: Client, args: argparse.Namespace) -> int:
    sig = signature(args.task, *_json_arg(args.args, list, "--args"),
                    **_json_arg(args.kwargs, dict, "--kwargs")).with_options(queue=args.queue)
    info = client.put_schedule(args.id, sig, cron=args.cron, every=args.every, timezone=args.tz,
                               missed=args.missed, description=args.description)
    _emit(schedule_json(info))
    return EXIT_OK


def _schedule_list(client: Client, args: argparse.Namespace) -> int:
    for info in client.list_schedules(args.page_size):
        _emit(schedule_json(info))
    return EXIT_OK


def _schedule_show(client: Client, args: argparse.Namespace) -> int:
    _emit(schedule_json(client.get_schedule(args.id)))
    return EXIT_OK


def _schedule_pause(client: Client, args: argparse.Namespace) -> int:
    _emit(schedule_json(client.pause_schedule(args.id)))
    return EXIT_OK


def _schedule_resume(client: Client, args: argparse.Namespace) -> int:
    _emit(schedule_json(client.resume_schedule(args.id)))
    return EXIT_OK


def _schedule_delete(client: Client, args: argparse.Namespace) -> int:
    client.delete_schedule(args.id)
    _emit({"id": args.id, "deleted": True})
    return EXIT_OK


def _add_schedule_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                           common: argparse.ArgumentParser) -> None:
    """`conveyor schedule create|list|show|pause|resume|delete`."""
    group = sub.add_parser("schedule", parents=[common], help="manage periodic schedules",
                           description="Create, list, show, pause, resume and delete periodic schedules.",
                           epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, helptext: str, run: Callable[[Client, argparse.Namespace], int]) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(
            name, parents=[common], help=helptext, description=helptext, epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(run=run)
        return p

    p = action("create", "create a schedule, or replace the one with the same id", _schedule_create)
    p.add_argument("id", help="schedule id: 1 to 128 of letters, digits, _ - . :")
    p.add_argument("--task", required=True, help="task name, e.g. myapp.tasks.cleanup")
    p.add_argument("--queue", default="default", help="queue [default: default]")
    trigger = p.add_mutually_exclusive_group(required=True)
    trigger.add_argument("--cron", help='cron expression, e.g. "*/5 * * * *" (six fields: seconds last)')
    trigger.add_argument("--every", type=_positive, help="fixed interval in seconds (at least 1)")
    p.add_argument("--tz", default="", help="IANA time zone of --cron, e.g. Europe/Paris [default UTC]")
    p.add_argument("--args", help="positional arguments of every tick's task, a JSON array")
    p.add_argument("--kwargs", help="keyword arguments of every tick's task, a JSON object")
    p.add_argument("--missed", default="fire-once", choices=[m.label for m in MissedTicks],
                   help="what to do with missed ticks [default fire-once]")
    p.add_argument("--description", default="", help="free text shown with the schedule")

    p = action("list", "list every schedule with its next fire time", _schedule_list)
    p.add_argument("--page-size", type=int, default=100, help="schedules per call, 1 to 1000 [default 100]")
    for name, helptext, run in (("show", "print a schedule", _schedule_show),
                                ("pause", "stop a schedule from firing", _schedule_pause),
                                ("resume", "let a paused schedule fire again", _schedule_resume),
                                ("delete", "delete a schedule (its tasks stay)", _schedule_delete)):
        action(name, helptext, run).add_argument("id", help="schedule id")


def _positive(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    """The argument parser of the client subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--broker", default=argparse.SUPPRESS,
                        help=f"broker address host:port [env {BROKER_ENV}, default {DEFAULT_BROKER}]")
    common.add_argument("--rpc-timeout", type=_positive, default=argparse.SUPPRESS,
                        help="deadline of each call to the broker, seconds [default 10]")
    top = argparse.ArgumentParser(prog="conveyor", parents=[common], epilog=_EPILOG,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, helptext: str, run: Callable[[Client, argparse.Namespace], int]
                ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=helptext, description=helptext, epilog=_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(run=run)
        return p

    p = command("enqueue", "submit a task by name (arguments as JSON)", _enqueue)
    p.add_argument("name", help="task name, e.g. myapp.tasks.add")
    p.add_argument("--queue", default="default", help="queue [default: default]")
    p.add_argument("--args", help="positional arguments, a JSON array")
    p.add_argument("--kwargs", help="keyword arguments, a JSON object")
    p.add_argument("--delay", type=_positive, help="run no sooner than this many seconds from now")
    p.add_argument("--priority", type=int, default=0, help="0 (lowest, default) to 9 (highest)")
    p.add_argument("--max-attempts", type=int, help="attempts in all, the first one included [default 3]")
    p.add_argument("--header", action="append", default=[], metavar="KEY=VALUE", help="a header (repeatable)")
    p.add_argument("--idempotency-key", help="a second submit with this key answers the first task")
    p.add_argument("--idempotency-ttl", type=_positive, help="seconds the idempotency key is kept [default 1 day]")
    p.add_argument("--unique-key", help="while a task with this key waits or runs, answer it instead of a copy")
    p.add_argument("--concurrency-key", help="run at most --concurrency-limit tasks with this key at once")
    p.add_argument("--concurrency-limit", type=int, help="with --concurrency-key: 1 to 10000 [default 1]")
    p.add_argument("--wait", action="store_true", help="wait for the task to finish and print it")
    p.add_argument("--timeout", type=_positive, default=60.0, help="with --wait: seconds to wait [default 60]")

    p = command("get", "print a task", _get)
    p.add_argument("id", help="task id")

    p = command("wait", "wait for a task to finish and print it", _wait)
    p.add_argument("id", help="task id")
    p.add_argument("--timeout", type=_positive, default=60.0, help="seconds to wait [default 60]")

    p = command("cancel", "cancel a task", _cancel)
    p.add_argument("id", help="task id")
    p.add_argument("--reason", default="", help="free text stored with the task")

    p = command("list", "list a queue's tasks in one state, oldest first", _list)
    p.add_argument("queue", help="queue name")
    p.add_argument("--state", default="queued",
                   choices=[s.label for s in TaskState if s is not TaskState.UNSPECIFIED],
                   help="state to list [default queued]")
    p.add_argument("--page-size", type=int, default=100, help="tasks per call, 1 to 1000 [default 100]")
    p.add_argument("--limit", type=int, default=0, help="stop after this many tasks (0: all)")

    p = command("queue", "show queues and set their limits", _queue)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    limits = actions.add_parser("limits", parents=[common], help="replace a queue's limits (0 or absent: none)")
    limits.add_argument("queue", help="queue name")
    limits.add_argument("--max-running", type=int, default=0, help="most tasks running at once")
    limits.add_argument("--rate", type=_positive, default=0.0, help="most tasks started per second")
    limits.add_argument("--burst", type=int, default=0, help="tasks that may start at once [default max(1, rate)]")
    show = actions.add_parser("show", parents=[common], help="print a queue: limits and task counts")
    show.add_argument("queue", help="queue name")
    actions.add_parser("list", parents=[common], help="print every queue")
    _add_schedule_commands(sub, common)

    _workflow_cli.add_commands(sub, common, _EPILOG, _emit, info_json)
    return top


def broker_address(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> str:
    """The broker to call: --broker, else $CONVEYOR_BROKER, else localhost:50051."""
    environ = os.environ if environ is None else environ
    return getattr(args, "broker", None) or environ.get(BROKER_ENV) or DEFAULT_BROKER


def _run(args: argparse.Namespace) -> int:
    target = broker_address(args)
    run: Callable[[Client, argparse.Namespace], int] = args.run
    try:
        with Client(target, timeout=getattr(args, "rpc_timeout", None) or 10.0) as client:
            return run(client, args)
    except (TypeError, ValueError) as exc:
        return _fail(EXIT_USAGE, "InvalidInput", str(exc))
    except TaskTimeoutError as exc:
        if exc.info is not None:
            _emit(info_json(exc.info))
        return _fail(EXIT_TIMEOUT, type(exc).__name__, str(exc), task_id=exc.task_id)
    except WorkflowTimeoutError as exc:
        if exc.info is not None:
            _emit(_workflow_cli.workflow_json(exc.info, info_json))
        return _fail(EXIT_TIMEOUT, type(exc).__name__, str(exc), workflow_id=exc.workflow_id)
    except InvalidArgumentError as exc:
        return _fail(EXIT_USAGE, type(exc).__name__, exc.message, code=exc.code, field=exc.field)
    except (NotFoundError, FailedPreconditionError) as exc:
        return _fail(EXIT_USAGE, type(exc).__name__, exc.message, code=exc.code)
    except (UnavailableError, DeadlineExceededError) as exc:
        return _fail(EXIT_UNAVAILABLE, type(exc).__name__, f"broker {target}: {exc.message}", code=exc.code)
    except ConveyorError as exc:
        return _fail(EXIT_TASK_FAILED, type(exc).__name__, exc.message, code=exc.code)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one client subcommand, e.g. ``main(["get", task_id, "--broker", "host:50051"])``.

    Args:
        argv: The arguments, starting with the subcommand (one of `COMMANDS`); default
            ``sys.argv[1:]``.

    Returns:
        The exit code: 0 ok, 1 task failed, 2 bad input or usage, 3 broker unavailable,
        4 a wait timed out.
    """
    try:
        args = parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exc:  # argparse: --help exits 0, a usage error 2
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return _run(args)
    except BrokenPipeError:  # the reader went away (`conveyor list q | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""`conveyor workflow show|wait|cancel|submit`: workflows from the command line, as JSON lines."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client_sdk._client import Client
from client_sdk._models import TaskInfo
from client_sdk._task import signature
from client_sdk._workflow import DAG, WorkflowInfo, WorkflowState

Emit = Callable[[dict[str, Any]], None]
InfoJson = Callable[[Any], dict[str, Any]]

EXIT_OK = 0
EXIT_FAILED = 1

SUBMIT_FORMAT = """\
submit reads a JSON file: {"name": "etl", "nodes": [{"name": "fetch", "task": "app.fetch",
"queue": "default", "args": [], "kwargs": {}, "parents": [], "passing": "first"}, ...]}
("passing": none, first or list; by default a node with one parent gets its result first,
one with several the list of their results, a root nothing).
"""


def links_json(info: TaskInfo) -> dict[str, Any]:
    """A task's workflow links for the CLI's JSON ({} for a lone task)."""
    if not info.workflow_id:
        return {}
    return {"workflow": {"id": info.workflow_id, "node": info.workflow_node, "parent_ids": list(info.parent_ids)}}


def workflow_json(info: WorkflowInfo, task_json: InfoJson) -> dict[str, Any]:
    """The JSON form of a workflow printed by the CLI."""
    return {
        "id": info.id, "name": info.name, "state": info.state.label, "reason": info.reason,
        "created_at": info.created_at.isoformat() if info.created_at else None,
        "finished_at": info.finished_at.isoformat() if info.finished_at else None,
        "output_nodes": list(info.output_nodes),
        "nodes": [{"name": n.name, "task_id": n.task_id, "parents": list(n.parents), "state": n.state.label,
                   "task": task_json(n.task) if n.task is not None else None} for n in info.nodes],
    }


def _exit(info: WorkflowInfo) -> int:
    return EXIT_OK if info.state is WorkflowState.SUCCEEDED else EXIT_FAILED


def dag_from_file(path: str) -> tuple[str, DAG]:
    """(name, DAG) of a workflow file (format: SUBMIT_FORMAT); ValueError when malformed."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("nodes"), list):
        raise ValueError(f'{path}: expected a JSON object with a "nodes" list')
    dag = DAG()
    for i, node in enumerate(document["nodes"]):
        if not isinstance(node, dict) or not isinstance(node.get("name"), str) or not isinstance(node.get("task"), str):
            raise ValueError(f'{path}: nodes[{i}] needs a "name" and a "task"')
        args, kwargs = node.get("args", []), node.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ValueError(f'{path}: nodes[{i}]: "args" must be a list and "kwargs" an object')
        sig = signature(node["task"], *args, **kwargs).with_options(queue=node.get("queue", "default"))
        dag.add(node["name"], sig, parents=list(node.get("parents", [])), passing=node.get("passing"))
    return str(document.get("name", "")), dag


def add_commands(sub: Any, common: argparse.ArgumentParser, epilog: str, emit: Emit, task_json: InfoJson) -> None:
    """Adds `workflow` and its subcommands to the `conveyor` parser."""
    top = sub.add_parser("workflow", parents=[common], help="show, wait for, cancel or submit a workflow",
                         description="Workflows: DAGs of tasks released as their parents succeed.",
                         epilog=SUBMIT_FORMAT + "\n" + epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = top.add_subparsers(dest="action", required=True, metavar="ACTION")

    def show(client: Client, args: argparse.Namespace) -> int:
        emit(workflow_json(client.get_workflow(args.id), task_json))
        return EXIT_OK

    def wait(client: Client, args: argparse.Namespace) -> int:
        info = client.wait_workflow(args.id, args.timeout)
        emit(workflow_json(info, task_json))
        return _exit(info)

    def cancel(client: Client, args: argparse.Namespace) -> int:
        state = client.cancel_workflow(args.id, args.reason)
        emit({"id": args.id, "state": state.label})
        return EXIT_OK

    def submit(client: Client, args: argparse.Namespace) -> int:
        name, dag = dag_from_file(args.file)
        handle = client.submit_workflow(dag, name=name, idempotency_key=args.idempotency_key)
        emit({"id": handle.id, "task_ids": handle.task_ids, "duplicate": handle.duplicate})
        if not args.wait:
            return EXIT_OK
        info = client.wait_workflow(handle.id, args.timeout)
        emit(workflow_json(info, task_json))
        return _exit(info)

    def action(name: str, helptext: str, run: Callable[[Client, argparse.Namespace], int]) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(name, parents=[common], help=helptext, description=helptext)
        p.set_defaults(run=run)
        return p

    p = action("show", "print a workflow and every node", show)
    p.add_argument("id", help="workflow id")
    p = action("wait", "wait for a workflow to finish and print it", wait)
    p.add_argument("id", help="workflow id")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait [default 60]")
    p = action("cancel", "cancel a workflow's unfinished nodes", cancel)
    p.add_argument("id", help="workflow id")
    p.add_argument("--reason", default="", help="free text stored with the workflow")
    p = action("submit", "submit a workflow from a JSON file", submit)
    p.add_argument("file", help="the workflow file (format below)")
    p.add_argument("--idempotency-key", default="", help="a repeated submit with this key answers the first")
    p.add_argument("--wait", action="store_true", help="wait for the workflow to finish and print it")
    p.add_argument("--timeout", type=float, default=60.0, help="with --wait: seconds to wait [default 60]")

"""Every script has its header, a wrapper passing the KEYS its header lists, and a store test."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Coroutine
from importlib import resources
from pathlib import Path
from typing import Any

import msgpack
import pytest
from redis.asyncio import Redis

from broker_service.domain import Completion, Failure, Lease, NewTask, RetryPolicy, TaskError
from broker_service.store.keys import QueueKeys, ScheduleKeys, WorkflowKeys
from broker_service.store.records import record_from_fields
from broker_service.store.scripts import _ROW_SOURCE, SCRIPT_KEYS, Scripts, script_keys, script_source
from tests.store.helpers import new_task

LUA = Path(str(resources.files("broker_service.store").joinpath("lua")))
SCRIPTS = sorted(p.stem for p in LUA.glob("*.lua"))
KEY_LINE = re.compile(r"^-- KEYS\[(\d+)\] (\w+) +(\S+) +\S")
ARGV_LINE = re.compile(r"^-- ARGV\[(\d+)\] (\w+) +(\S+) +\S")
ARGV_ITEMS = re.compile(r"^-- ARGV\[(\d+)\.\.\] (\d+) per \w+:$")
QUEUE = QueueKeys("conveyor", "meta")
LEASE = Lease("01HAAAAAAAAAAAAAAAAAAAAAAA", 3)
SCHEDULES = ScheduleKeys("conveyor")
SCHEDULE_SCRIPTS = frozenset(name for name in SCRIPT_KEYS if name.endswith("_schedule"))
WORKFLOW = WorkflowKeys("conveyor", "01HAAAAAAAAAAAAAAAAAAAAAAB")
WORKFLOW_SCRIPTS = frozenset({"create_workflow", "settle_node", "cancel_workflow"})


class Header:
    """The parsed header of one script."""

    def __init__(self, name: str) -> None:
        self.text = script_source(name).decode()  # includes spliced in: what Redis runs
        lines = self.text.splitlines()
        self.summary = lines[0]
        self.comments = [line for line in lines if line.startswith("--")]
        self.keys = [(int(m[1]), m[2]) for line in lines if (m := KEY_LINE.match(line))]
        self.argv = [(int(m[1]), m[2]) for line in lines if (m := ARGV_LINE.match(line))]
        items = [(int(m[1]), int(m[2])) for line in lines if (m := ARGV_ITEMS.match(line))]
        self.items = items[0] if items else None


def test_every_script_is_known_to_the_wrappers() -> None:
    assert sorted(SCRIPT_KEYS) == SCRIPTS
    assert len(SCRIPTS) >= 14


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_has_a_complete_header(name: str) -> None:
    header = Header(name)
    assert header.summary.startswith(f"-- {name}: ") and len(header.summary) > len(name) + 10
    assert header.keys, "no KEYS entries"
    assert [i for i, _ in header.keys] == list(range(1, len(header.keys) + 1))
    assert any(c.startswith("-- Returns: ") for c in header.comments)
    assert any(c.startswith("-- Errors: ") for c in header.comments)


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_header_keys_match_the_wrapper(name: str) -> None:
    assert tuple(key for _, key in Header(name).keys) == SCRIPT_KEYS[name]


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_has_one_local_per_header_entry_before_its_logic(name: str) -> None:
    header = Header(name)
    for index, key in header.keys:
        assert re.search(rf"^local {key} = KEYS\[{index}\]$", header.text, re.M), f"local {key} = KEYS[{index}]"
    for index, arg in header.argv:
        assert re.search(rf"^local {arg} = (tonumber\()?ARGV\[{index}\]\)?$", header.text, re.M), arg


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_builds_no_key_names_and_never_scans(name: str) -> None:
    code = "\n".join(re.sub(r"--.*$", "", line) for line in Header(name).text.splitlines())
    literals = re.findall(r"'([^']*)'", code)
    assert not [lit for lit in literals if ":" in lit or "{" in lit], "key names must come through KEYS"
    assert not re.search(r"redis\.call\('(KEYS|SCAN)'", code)


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_has_a_store_test(name: str) -> None:
    assert (Path(__file__).parent / f"test_{name}.py").is_file()


class RecordingScripts(Scripts):
    """Scripts whose `run` records what a wrapper passes instead of calling Redis."""

    def __init__(self) -> None:
        super().__init__(Redis())  # never connects: `run` is replaced
        self.calls: list[tuple[str, list[str], list[Any]]] = []

    async def run(self, name: str, keys: Any, args: Any) -> Any:
        self.calls.append((name, list(keys), list(args)))
        return {"promote": 0, "trim": 0, "cancel": b"cancelled", "set_limits": 0,
                "delete_schedule": 1, "advance_schedule": 1, "create_workflow": 1}.get(name, [])


def _call_wrapper(scripts: RecordingScripts, name: str, items: int) -> None:
    import asyncio

    leases = [LEASE] * items
    calls: dict[str, Callable[[], Coroutine[Any, Any, Any]]] = {
        "enqueue": lambda: scripts.enqueue(QUEUE, [new_task("meta") for _ in range(items)]),
        "lease": lambda: scripts.lease(QUEUE, 5, "w"),
        "handoff": lambda: scripts.handoff(QUEUE, [new_task("meta") for _ in range(items)], 5, "w"),
        "extend": lambda: scripts.extend(QUEUE, "w", leases),
        "complete": lambda: scripts.complete(QUEUE, [Completion(LEASE.ulid, 3, b"r", "t")] * items),
        "fail": lambda: scripts.fail(QUEUE, [Failure(LEASE.ulid, 3, TaskError("E", "m"))] * items,
                                     [0.5] * items, 1000, 10),
        "cancel_running": lambda: scripts.cancel_running(QUEUE, leases),
        "release": lambda: scripts.release(QUEUE, leases, "nack", True),
        "progress": lambda: scripts.progress(QUEUE, leases, [(0.5, "m")] * items),
        "cancel": lambda: scripts.cancel(QUEUE, LEASE.ulid, "why"),
        "reap": lambda: scripts.reap(QUEUE, 10, 0.5, 1000, 10),
        "promote": lambda: scripts.promote(QUEUE, 10),
        "expire": lambda: scripts.expire(QUEUE, 10),
        "trim": lambda: scripts.trim(QUEUE, 10),
        "list_page": lambda: scripts.list_page(QUEUE, QUEUE.queued, 10, None, ["state", "name"]),
        "read": lambda: scripts.read(QUEUE, [LEASE.ulid] * items),
        "set_limits": lambda: scripts.set_limits(QUEUE, 5, 2.5, 10),
        "put_schedule": lambda: scripts.put_schedule(SCHEDULES, "s", "{}", "* * * * *", "", 0, 1, "", 0, 60_000),
        "pause_schedule": lambda: scripts.pause_schedule(SCHEDULES, "s"),
        "resume_schedule": lambda: scripts.resume_schedule(SCHEDULES, "s"),
        "delete_schedule": lambda: scripts.delete_schedule(SCHEDULES, "s"),
        "advance_schedule": lambda: scripts.advance_schedule(SCHEDULES, "s", 1, 2, 1, 1, "t"),
        "create_workflow": lambda: scripts.create_workflow(WORKFLOW, "wf", 1000, [("a", "t@q", "", "")] * items),
        "settle_node": lambda: scripts.settle_node(WORKFLOW, "a", "succeeded"),
        "cancel_workflow": lambda: scripts.cancel_workflow(WORKFLOW, "why"),
        "unblock": lambda: scripts.unblock(QUEUE, [(LEASE.ulid, b"")] * items),
    }
    asyncio.run(calls[name]())


@pytest.mark.parametrize("name", SCRIPTS)
def test_wrapper_passes_the_header_keys_and_argv_layout(name: str) -> None:
    header = Header(name)
    scripts = RecordingScripts()

    _call_wrapper(scripts, name, items=3)

    [(called, keys, args)] = scripts.calls
    assert called == name
    if name in SCHEDULE_SCRIPTS:
        assert keys == script_keys(name, SCHEDULES, {"schedule": SCHEDULES.schedule("s")})
        assert all(key.startswith(SCHEDULES.tag) for key in keys), "every key shares the schedules' hash tag"
    else:
        extra = {"index": QUEUE.queued} if name == "list_page" else None
        owner = WORKFLOW if name in WORKFLOW_SCRIPTS else QUEUE
        assert keys == script_keys(name, owner, extra)
        assert all(key.startswith(owner.tag) for key in keys), "every key shares one hash tag"
    if header.items is not None:
        first, per_item = header.items
        assert first - 1 == len(header.argv)
        assert len(args) == len(header.argv) + 3 * per_item
    elif name != "list_page":
        assert len(args) == len(header.argv)
    if name == "enqueue":  # one msgpack argument: a row per task, one entry per line of its header
        rows = msgpack.unpackb(args[0], raw=True)
        entries = re.findall(r"^--   (\w+) +(?:string|bytes|int) +\S", header.text, re.M)
        # the three tasks share all but ulid and payload: full row, then two (ulid, payload) pairs
        assert len(entries) == 27 and len(rows[0]) == 27 and len(rows) == 5
        assert not any(isinstance(entry, list) for entry in rows[1:])


def test_enqueue_rows_are_shared_only_by_tasks_alike_in_every_stored_field() -> None:
    """A task whose _ROW_SOURCE attributes equal the task's before it travels as (ulid, payload):
    those attributes must be every NewTask field but the ones each row carries or the call fixes."""
    fields = {f.name for f in dataclasses.fields(NewTask)} - {"ulid", "payload", "queue"}
    assert set(_ROW_SOURCE.__reduce__()[1]) == fields


def _local_functions(source: str) -> dict[str, str]:
    """{name: text} of the script's `local function` definitions (up to their closing `end`)."""
    found = {}
    for match in re.finditer(r"(?m)^local function (\w+)\(.*?^end$", source, re.S):
        found[match.group(1)] = match.group(0)
    return found


def test_shared_helpers_are_included_not_copied() -> None:
    """A helper that several scripts need lives once in lua/lib/ and each script includes it;
    every include names a helper there and every helper there is included."""
    helpers = {path.stem: path.read_text() for path in (LUA / "lib").glob("*.lua")}
    included: dict[str, list[str]] = {}
    for name in SCRIPTS:
        raw = (LUA / f"{name}.lua").read_text()
        for helper in re.findall(r"(?m)^--#include (\w+)$", raw):
            included.setdefault(helper, []).append(name)
        assert not set(_local_functions(raw)) & set(helpers), f"{name} copies a helper of lua/lib/"
    assert {"in_chunks", "let_one_go", "to_ready"} <= set(included)
    assert set(included) == set(helpers)
    for helper, text in helpers.items():
        assert set(_local_functions(text)) == {helper}, f"lua/lib/{helper}.lua defines other functions"
        assert all(text.rstrip("\n") in Header(name).text for name in included[helper])


def test_task_defaults_are_one_table_everywhere_and_match_the_domain() -> None:
    """enqueue leaves a policy field out of a task hash while it holds its default, so every
    script reading one applies the same DEFAULT table; Python's record decoding applies the
    domain's defaults, which must be the same values."""
    tables = {}
    for name in SCRIPTS:
        source = Header(name).text
        if "DEFAULT." in source or name == "enqueue":
            [table] = re.findall(r"(?m)^local DEFAULT = \{(.*)\}$", source)
            tables[name] = table
    assert {"enqueue", "lease", "complete", "fail", "reap", "extend"} <= set(tables)
    assert len(set(tables.values())) == 1, f"DEFAULT differs between {sorted(tables)}"
    lua = {key.strip(): float(value) for key, value in
           (entry.split("=") for entry in next(iter(tables.values())).split(","))}
    retry, task = RetryPolicy(), NewTask("u", "q", "n")
    assert lua == {"max": retry.max_attempts, "b_init": retry.initial_backoff_ms, "b_max": retry.max_backoff_ms,
                   "b_mult": retry.multiplier, "lease": task.lease_ms, "ttl": task.result_ttl_ms}
    record = record_from_fields("u", "q", {"name": b"n", "state": b"queued"})
    assert (record.retry, record.lease_ms, record.result_ttl_ms) == (retry, task.lease_ms, task.result_ttl_ms)

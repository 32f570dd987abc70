"""The Lua scripts of lua/: loaded once, called by SHA, one typed wrapper per script."""

from __future__ import annotations

import hashlib
import logging
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import msgpack
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from broker_service.domain import DEFAULT_CONTENT_TYPE, Completion, Failure, Lease, NewTask
from broker_service.store.direct import DirectCalls, pack, pack_parts
from broker_service.store.errors import redis_errors
from broker_service.store.keys import QueueKeys, ScheduleKeys, WorkflowKeys
from broker_service.store.records import headers_to

log = logging.getLogger(__name__)

# The KEYS of every script, in order: each name is a QueueKeys attribute, or a key the wrapper
# passes itself (list_page's `index`). The header of each .lua file lists the same names.
SCRIPT_KEYS: dict[str, tuple[str, ...]] = {
    "enqueue": ("task_prefix", "ready", "ready_lists", "scheduled", "start_deadlines", "events", "pending",
                "idem_prefix", "uniq_prefix"),
    "handoff": ("task_prefix", "ready", "running", "sequence", "limits", "running_events"),
    "lease": ("task_prefix", "ready", "ready_lists", "running", "start_deadlines", "expired", "sequence", "events",
              "limits", "bucket", "held", "conc_prefix", "held_prefix", "uniq_prefix", "wf_outbox", "running_events"),
    "extend": ("task_prefix", "running"),
    "complete": ("task_prefix", "running", "succeeded", "events", "ready", "ready_lists", "held", "conc_prefix",
                 "held_prefix", "uniq_prefix", "wf_outbox"),
    "fail": ("task_prefix", "running", "ready", "ready_lists", "scheduled", "failed", "cancelled", "events", "held",
             "conc_prefix", "held_prefix", "uniq_prefix", "wf_outbox"),
    "cancel_running": ("task_prefix", "running", "cancelled", "events", "ready", "ready_lists", "held", "conc_prefix",
                       "held_prefix", "uniq_prefix", "wf_outbox"),
    "release": ("task_prefix", "running", "ready", "ready_lists", "cancelled", "start_deadlines", "events", "held",
                "conc_prefix", "held_prefix", "uniq_prefix", "wf_outbox"),
    "progress": ("task_prefix", "events"),
    "cancel": ("task_prefix", "ready", "ready_lists", "scheduled", "start_deadlines", "cancelled", "events", "held",
               "held_prefix", "uniq_prefix", "pending", "wf_outbox"),
    "reap": ("task_prefix", "running", "ready", "ready_lists", "scheduled", "failed", "cancelled", "events", "held",
             "conc_prefix", "held_prefix", "uniq_prefix", "wf_outbox"),
    "promote": ("task_prefix", "scheduled", "ready", "ready_lists", "queued", "events"),
    "expire": ("task_prefix", "start_deadlines", "ready", "ready_lists", "scheduled", "expired", "events", "held",
               "held_prefix", "uniq_prefix", "wf_outbox"),
    "trim": ("task_prefix", "succeeded", "failed", "cancelled", "expired"),
    "list_page": ("index", "task_prefix"),
    "read": ("task_prefix", "ready"),
    "set_limits": ("limits", "events"),
    # Schedules: ScheduleKeys attributes; `schedule` (one schedule's hash) the wrapper passes itself.
    "put_schedule": ("schedule", "due", "ids"),
    "pause_schedule": ("schedule", "due"),
    "resume_schedule": ("schedule", "due"),
    "delete_schedule": ("schedule", "due", "ids"),
    "advance_schedule": ("schedule", "due"),
    # Workflows: the graph lives under the workflow's own tag (WorkflowKeys); unblock in a queue's.
    "create_workflow": ("record", "events"),
    "settle_node": ("record", "events"),
    "cancel_workflow": ("record", "events"),
    "unblock": ("task_prefix", "pending", "ready", "ready_lists", "scheduled", "start_deadlines", "events"),
}

Arg = str | bytes | int | float
# Script calls' packed EVALSHA, SHA and KEYS kept (cleared when full: a few per queue in use).
MAX_PACKED_HEADS = 4096
Call = tuple[str, list[str], list[Arg]]  # a script's name, KEYS and ARGV


@dataclass(frozen=True, slots=True)
class Script:
    """One script's source and SHA1 (the EVALSHA handle, computed locally)."""

    name: str
    source: bytes
    sha: str


def read_scripts() -> dict[str, Script]:
    """Reads every script named in SCRIPT_KEYS from the package's lua/ folder, and builds the
    scripts composed of them (ENQUEUE_LEASE)."""
    scripts = {}
    for name in SCRIPT_KEYS:
        scripts[name] = _script(name, script_source(name))
    scripts[ENQUEUE_LEASE] = _script(ENQUEUE_LEASE, b"".join((
        b"-- handoff.lua, else enqueue.lua then lease.lua for the same queue, in one call (built by scripts.py)\n",
        b"local function handoff(KEYS, ARGV)\n", scripts["handoff"].source, b"\nend\n",
        b"local function enqueue(KEYS, ARGV)\n", scripts["enqueue"].source, b"\nend\n",
        b"local function lease(KEYS, ARGV)\n", scripts["lease"].source, b"\nend\n",
        _enqueue_lease_main())))
    return scripts


# A line `--#include NAME` of a script stands for lua/lib/NAME.lua: the helpers several
# transitions share are written once and spliced in where each script had its copy.
_INCLUDE = re.compile(rb"(?m)^--#include (\w+)$")


def script_source(name: str) -> bytes:
    """The source of lua/NAME.lua as Redis runs it: its includes spliced in."""
    folder = resources.files("broker_service.store").joinpath("lua")

    def helper(match: re.Match[bytes]) -> bytes:
        return folder.joinpath("lib", f"{match[1].decode()}.lua").read_bytes().rstrip(b"\n")

    return _INCLUDE.sub(helper, folder.joinpath(f"{name}.lua").read_bytes())


def _script(name: str, source: bytes) -> Script:
    return Script(name, source, hashlib.sha1(source, usedforsecurity=False).hexdigest())


# enqueue_lease: KEYS are enqueue's, then lease's; ARGV enqueue's (`quiet` set: no wake-up of
# its own), then lease's. When handoff.lua applies (nothing waits ahead of the new tasks) it
# writes them straight to running, as enqueue then lease would; else enqueue, then lease, and
# tasks the lease left queued wake the queue's other workers. Answers {enqueue's answer,
# lease's answer}.
ENQUEUE_LEASE = "enqueue_lease"
ENQUEUE_ARGS = 2


def _enqueue_lease_main() -> bytes:
    enqueue_keys = SCRIPT_KEYS["enqueue"]
    lease_keys = SCRIPT_KEYS["lease"]

    def key(name: str) -> str:  # handoff's KEYS as indexes of enqueue_lease's
        if name in enqueue_keys:
            return f"KEYS[{enqueue_keys.index(name) + 1}]"
        return f"KEYS[{len(enqueue_keys) + lease_keys.index(name) + 1}]"

    handoff_keys = ", ".join(key(name) for name in SCRIPT_KEYS["handoff"])
    lease_args = f"ARGV[{ENQUEUE_ARGS + 1}], ARGV[{ENQUEUE_ARGS + 2}]"
    return f"""
local handed = handoff({{{handoff_keys}}}, {{ARGV[1], {lease_args}}})
if handed then return handed end
local nk, na, ready, events = {len(enqueue_keys)}, {ENQUEUE_ARGS}, {enqueue_keys.index("ready") + 1}, \
{enqueue_keys.index("events") + 1}
local k1, a1, k2, a2 = {{}}, {{}}, {{}}, {{}}
for i = 1, nk do k1[i] = KEYS[i] end
for i = nk + 1, #KEYS do k2[#k2 + 1] = KEYS[i] end
for i = 1, na do a1[i] = ARGV[i] end
for i = na + 1, #ARGV do a2[#a2 + 1] = ARGV[i] end
local enqueued = enqueue(k1, a1)
local leased = lease(k2, a2)
if redis.call('HLEN', k1[ready]) > 0 then redis.call('PUBLISH', k1[events], 'wake') end
return {{enqueued, leased}}
""".encode()


def script_keys(name: str, queue: QueueKeys | ScheduleKeys | WorkflowKeys,
                extra: Mapping[str, str] | None = None) -> list[str]:
    """The KEYS of script `name` for `queue` (or the schedules, or a workflow), in the order its header lists them."""
    if extra:
        return [extra[key] if key in extra else str(getattr(queue, key)) for key in SCRIPT_KEYS[name]]
    known = _KNOWN_KEYS.get((name, queue))
    if known is None:  # a queue's keys are the same every call: built once (a lease names 15)
        if len(_KNOWN_KEYS) >= MAX_PACKED_HEADS:
            _KNOWN_KEYS.clear()
        known = _KNOWN_KEYS[name, queue] = tuple(str(getattr(queue, key)) for key in SCRIPT_KEYS[name])
    return list(known)


_KNOWN_KEYS: dict[tuple[str, QueueKeys | ScheduleKeys | WorkflowKeys], tuple[str, ...]] = {}


def _num(value: float) -> str:
    return repr(float(value))


class Scripts:
    """Calls the scripts with EVALSHA; a NOSCRIPT reply (Redis restarted) reloads them all once."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._calls = DirectCalls(redis)
        self._heads: dict[tuple[str, ...], bytes] = {}  # (script, *KEYS) -> EVALSHA, SHA and KEYS packed
        self._scripts = read_scripts()

    @property
    def names(self) -> list[str]:
        return list(self._scripts)

    async def load(self) -> None:
        """SCRIPT LOADs every script in one round trip."""
        with redis_errors():
            async with self._redis.pipeline(transaction=False) as pipe:
                for script in self._scripts.values():
                    pipe.script_load(script.source)
                shas = await pipe.execute()
        for script, sha in zip(self._scripts.values(), shas, strict=True):
            loaded = sha.decode() if isinstance(sha, bytes) else str(sha)
            if loaded != script.sha:
                raise RuntimeError(f"script {script.name}: server SHA {loaded} differs from {script.sha}")

    async def run(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """EVALSHA of script `name`; errors leave as domain errors (see errors.py)."""
        sha = self._scripts[name].sha
        head_key = (name, *keys)
        head = self._heads.get(head_key)
        if head is None:  # the same few per queue: packed once
            if len(self._heads) >= MAX_PACKED_HEADS:
                self._heads.clear()
            head = self._heads[head_key] = pack_parts(["EVALSHA", sha, len(keys), *keys])
        packed = pack(args, head, 3 + len(keys))
        with redis_errors():
            try:
                return await self._calls.execute("EVALSHA", sha, len(keys), *keys, *args, packed=packed)
            except NoScriptError:
                log.info("script cache empty (redis restarted?), loading scripts script=%s", name)
                await self.load()
                return await self._calls.execute("EVALSHA", sha, len(keys), *keys, *args, packed=packed)

    # One wrapper per script: KEYS from SCRIPT_KEYS, ARGV in the order of the script's header.

    async def enqueue(self, queue: QueueKeys, tasks: Sequence[NewTask]) -> list[Any]:
        return list(await self.run(*enqueue_call(queue, tasks)))

    async def lease(self, queue: QueueKeys, count: int, worker_id: str) -> list[Any]:
        return list(await self.run(*lease_call(queue, count, worker_id)))

    async def handoff(self, queue: QueueKeys, tasks: Sequence[NewTask], count: int,
                      worker_id: str) -> tuple[list[Any], list[Any]] | None:
        """handoff.lua alone: None when it did not apply (nothing written). The broker calls it
        as part of ENQUEUE_LEASE."""
        _, _, enqueue_args = enqueue_call(queue, tasks)
        reply = await self.run("handoff", script_keys("handoff", queue), [enqueue_args[0], count, worker_id])
        if not reply:
            return None
        enqueued, leased = reply
        return list(enqueued), list(leased)

    async def enqueue_and_lease(self, queue: QueueKeys, tasks: Sequence[NewTask], count: int,
                                worker_id: str) -> tuple[list[Any], list[Any]]:
        """handoff.lua, else enqueue.lua then lease.lua for `worker_id`, in one script call
        (ENQUEUE_LEASE)."""
        _, enqueue_keys, enqueue_args = enqueue_call(queue, tasks, quiet=True)
        _, lease_keys, lease_args = lease_call(queue, count, worker_id)
        enqueued, leased = await self.run(ENQUEUE_LEASE, enqueue_keys + lease_keys, enqueue_args + lease_args)
        return list(enqueued), list(leased)

    async def extend(self, queue: QueueKeys, worker_id: str, leases: Sequence[Lease]) -> list[int]:
        args: list[Arg] = [worker_id]
        for lease in leases:
            args += [lease.ulid, lease.token]
        return list(await self.run("extend", script_keys("extend", queue), args))

    async def complete(self, queue: QueueKeys, items: Sequence[Completion],
                       read: Sequence[str] = ()) -> tuple[list[int], list[Any]]:
        """The script's answer per item, and the hashes of `read` (ulids) as it left them."""
        args: list[Arg] = [" ".join(read)]
        for item in items:
            # application/json, the usual media type, is the default: not stored (as for payloads)
            args += [item.ulid, item.token, item.result,
                     "" if item.content_type in ("", DEFAULT_CONTENT_TYPE) else item.content_type]
        answers = list(await self.run("complete", script_keys("complete", queue), args))
        hashes = [dict(zip(flat[::2], flat[1::2], strict=True)) for flat in answers[len(items):]]
        return answers[:len(items)], hashes

    async def fail(self, queue: QueueKeys, items: Sequence[Failure], random_fractions: Sequence[float],
                   dead_letter_ttl_ms: int, dead_letter_max: int) -> list[bytes]:
        args: list[Arg] = [dead_letter_ttl_ms, dead_letter_max]
        for item, fraction in zip(items, random_fractions, strict=True):
            error = item.error
            args += [item.ulid, item.token, error.type, error.message, error.traceback,
                     1 if error.retryable else 0, item.retry_after_ms, _num(fraction)]
        return list(await self.run("fail", script_keys("fail", queue), args))

    async def cancel_running(self, queue: QueueKeys, leases: Sequence[Lease]) -> list[int]:
        args: list[Arg] = []
        for lease in leases:
            args += [lease.ulid, lease.token]
        return list(await self.run("cancel_running", script_keys("cancel_running", queue), args))

    async def release(self, queue: QueueKeys, leases: Sequence[Lease], reason: str, started: bool) -> list[int]:
        args: list[Arg] = [reason, 1 if started else 0]
        for lease in leases:
            args += [lease.ulid, lease.token]
        return list(await self.run("release", script_keys("release", queue), args))

    async def progress(self, queue: QueueKeys, leases: Sequence[Lease],
                       values: Sequence[tuple[float, str]]) -> list[int]:
        args: list[Arg] = []
        for lease, (fraction, message) in zip(leases, values, strict=True):
            args += [lease.ulid, lease.token, _num(fraction), message]
        return list(await self.run("progress", script_keys("progress", queue), args))

    async def cancel(self, queue: QueueKeys, ulid: str, reason: str) -> bytes:
        reply: bytes = await self.run("cancel", script_keys("cancel", queue), [ulid, reason])
        return reply

    async def reap(self, queue: QueueKeys, limit: int, random_fraction: float,
                   dead_letter_ttl_ms: int, dead_letter_max: int) -> list[list[bytes]]:
        args: list[Arg] = [limit, _num(random_fraction), dead_letter_ttl_ms, dead_letter_max]
        return list(await self.run("reap", script_keys("reap", queue), args))

    async def promote(self, queue: QueueKeys, limit: int) -> int:
        return int(await self.run("promote", script_keys("promote", queue), [limit]))

    async def expire(self, queue: QueueKeys, limit: int) -> list[bytes]:
        return list(await self.run("expire", script_keys("expire", queue), [limit]))

    async def trim(self, queue: QueueKeys, limit: int) -> int:
        return int(await self.run("trim", script_keys("trim", queue), [limit]))

    async def list_page(self, queue: QueueKeys, index: str, page_size: int, after: tuple[str, str] | None,
                   fields: Sequence[str]) -> list[Any]:
        score, member = after or ("", "")
        args: list[Arg] = [page_size, score, member, *fields]
        return list(await self.run("list_page", script_keys("list_page", queue, {"index": index}), args))

    async def read(self, queue: QueueKeys, ulids: Sequence[str]) -> list[Any]:
        return list(await self.run("read", script_keys("read", queue), ulids))

    async def set_limits(self, queue: QueueKeys, max_running: int, rate: float, burst: int) -> int:
        args: list[Arg] = [max_running, _num(rate), burst]
        return int(await self.run("set_limits", script_keys("set_limits", queue), args))
    # Schedules: one hash per schedule plus two indexes, all under the schedules' hash tag.

    async def put_schedule(self, keys: ScheduleKeys, schedule_id: str, task: str, cron: str, tz: str,
                           every_ms: int, missed: int, desc: str, anchor_ms: int, next_ms: int) -> list[Any]:
        args: list[Arg] = [schedule_id, task, cron, tz, every_ms, missed, desc, anchor_ms, next_ms]
        return list(await self.run("put_schedule", self._schedule_keys("put_schedule", keys, schedule_id), args))

    async def pause_schedule(self, keys: ScheduleKeys, schedule_id: str) -> list[Any]:
        return list(await self.run("pause_schedule", self._schedule_keys("pause_schedule", keys, schedule_id),
                                   [schedule_id]))

    async def resume_schedule(self, keys: ScheduleKeys, schedule_id: str) -> list[Any]:
        return list(await self.run("resume_schedule", self._schedule_keys("resume_schedule", keys, schedule_id),
                                   [schedule_id]))

    async def delete_schedule(self, keys: ScheduleKeys, schedule_id: str) -> int:
        return int(await self.run("delete_schedule", self._schedule_keys("delete_schedule", keys, schedule_id),
                                  [schedule_id]))

    async def advance_schedule(self, keys: ScheduleKeys, schedule_id: str, expected_ms: int, next_ms: int,
                               fired: int, last_ms: int, last_task: str) -> int:
        args: list[Arg] = [schedule_id, expected_ms, next_ms, fired, last_ms, last_task]
        return int(await self.run("advance_schedule", self._schedule_keys("advance_schedule", keys, schedule_id),
                                  args))

    @staticmethod
    def _schedule_keys(name: str, keys: ScheduleKeys, schedule_id: str) -> list[str]:
        return script_keys(name, keys, {"schedule": keys.schedule(schedule_id)})

    # Workflows.

    async def create_workflow(self, workflow: WorkflowKeys, name: str, ttl_ms: int,
                              nodes: Sequence[tuple[str, str, str, str]]) -> int:
        args: list[Arg] = [name, ttl_ms]
        for node in nodes:
            args += list(node)
        return int(await self.run("create_workflow", script_keys("create_workflow", workflow), args))

    async def settle_node(self, workflow: WorkflowKeys, node: str, state: str) -> list[Any]:
        return list(await self.run("settle_node", script_keys("settle_node", workflow), [node, state]))

    async def cancel_workflow(self, workflow: WorkflowKeys, reason: str) -> list[bytes]:
        return list(await self.run("cancel_workflow", script_keys("cancel_workflow", workflow), [reason]))

    async def unblock(self, queue: QueueKeys, items: Sequence[tuple[str, bytes]]) -> list[bytes]:
        args: list[Arg] = []
        for ulid, presults in items:
            args += [ulid, presults]
        return list(await self.run("unblock", script_keys("unblock", queue), args))


# The NewTask attributes behind a row's entries after ulid and payload: tasks whose values are
# equal (read in one C call) share those entries, so a batch converts them once.
_ROW_SOURCE = operator.attrgetter(
    "name", "content_type", "headers", "priority", "retry", "timeout_ms", "lease_ms", "result_ttl_ms", "run_at_ms",
    "delay_ms", "start_timeout_ms", "idempotency_key", "idempotency_ttl_ms", "unique_key", "concurrency_key",
    "concurrency_limit", "schedule_id", "workflow_id", "workflow_node", "parent_ids", "result_passing")


def enqueue_call(queue: QueueKeys, tasks: Sequence[NewTask], *, quiet: bool = False) -> Call:
    """enqueue.lua's name, KEYS and ARGV for `tasks`: one MessagePack row per task, or two
    entries (ulid, payload) in the array itself for a task whose other entries equal the task's
    before it."""
    rows: list[Any] = []
    last: tuple[Any, ...] | None = None
    for task in tasks:
        source = _ROW_SOURCE(task)
        if source == last:
            rows += (task.ulid, task.payload)
            continue
        last = source
        retry = task.retry
        rows.append((
            task.ulid, task.name, task.payload,
            "" if task.content_type in ("", DEFAULT_CONTENT_TYPE) else task.content_type,
            headers_to(task.headers) if task.headers else "", task.priority, retry.max_attempts,
            retry.initial_backoff_ms, retry.max_backoff_ms, _num(retry.multiplier), _num(retry.jitter),
            task.timeout_ms, task.lease_ms, task.result_ttl_ms, task.run_at_ms or 0, task.delay_ms,
            task.start_timeout_ms,
            task.idempotency_key, task.idempotency_ttl_ms, task.unique_key, task.concurrency_key,
            task.concurrency_limit, task.schedule_id, task.workflow_id, task.workflow_node,
            " ".join(task.parent_ids), task.result_passing))
    # Lua's cmsgpack reads raw strings only: bytes and text both go as raw (use_bin_type=False).
    return "enqueue", script_keys("enqueue", queue), [msgpack.packb(rows, use_bin_type=False), "1" if quiet else ""]


def lease_call(queue: QueueKeys, count: int, worker_id: str) -> Call:
    return "lease", script_keys("lease", queue), [count, worker_id]

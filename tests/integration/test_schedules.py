"""Periodic schedules end to end: exactly one task per tick across replicas, missed-tick policies,
cron in a time zone, schedules declared on tasks, the SDKs, the CLI and bad input."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
import redis
from conveyor.v1 import admin_service_pb2 as adm
from conveyor.v1 import admin_service_pb2_grpc as adm_grpc
from conveyor.v1 import task_service_pb2, task_service_pb2_grpc

from broker_service.store.keys import QueueKeys, ScheduleKeys
from client_sdk import (
    AsyncClient,
    Client,
    InvalidArgumentError,
    MissedTicks,
    NotFoundError,
    ScheduleInfo,
    TaskState,
    signature,
)
from client_sdk.cli import main as cli_main
from tests.helpers import BrokerProcess, WorkerFactory, eventually, run_async
from tests.integration.conftest import MakeBroker

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def tick_of(task_id: str) -> int:
    """The tick (ms) of a scheduled task: the time part of its ulid."""
    value = 0
    for char in task_id[:10]:
        value = value * 32 + _CROCKFORD.index(char)
    return value


def ms(moment: datetime | None) -> int:
    assert moment is not None
    return round(moment.timestamp() * 1000)


def ticks(client: Client, queue: str) -> list[int]:
    """Ticks of every task a schedule put into `queue` (none of them run: no worker takes it)."""
    return sorted(tick_of(t.id) for t in client.list(queue, TaskState.QUEUED, page_size=1000))


def assert_consecutive(found: list[int], step: int = 1000) -> None:
    assert found, "no ticks"
    assert found == list(range(found[0], found[-1] + 1, step)), f"gap or duplicate in {found}"


def fired_at_least(client: Client, schedule_id: str, count: int) -> bool:
    return client.get_schedule(schedule_id).fire_count >= count


def fired_after(client: Client, schedule_id: str, tick_ms: int) -> bool:
    last = client.get_schedule(schedule_id).last_fire_at
    return last is not None and ms(last) > tick_ms


@pytest.fixture
def replicas(make_broker: MakeBroker) -> list[BrokerProcess]:
    """Three broker replicas on one Redis and one namespace."""
    return [make_broker() for _ in range(3)]


def test_three_replicas_fire_every_tick_exactly_once_even_when_one_is_killed(
        replicas: list[BrokerProcess], queue_name: str) -> None:
    first, second, third = replicas
    with Client(first.address) as client:
        put = client.put_schedule("every-second", signature("tests.noop").with_options(queue=queue_name), every=1)
        assert put.every == timedelta(seconds=1) and put.next_fire_at is not None
        eventually(lambda: client.get_schedule("every-second").fire_count >= 10, timeout=20, interval=0.2)
    first.kill()

    with Client(second.address) as client:
        eventually(lambda: client.get_schedule("every-second").fire_count >= 22, timeout=25, interval=0.2)
        paused = client.pause_schedule("every-second")
        # A pass that read the schedule before the pause may still submit its tick: let it land.
        eventually(lambda: len(ticks(client, queue_name)) >= paused.fire_count, timeout=5)
        found = ticks(client, queue_name)

        assert_consecutive(found)
        assert found[0] == ms(put.next_fire_at)
        assert paused.fire_count <= len(found) <= paused.fire_count + 1
        assert tick_of(paused.last_task_id) == ms(paused.last_fire_at) in found
        # Each tick's task says where it came from, and carries the tick's idempotency key.
        with grpc.insecure_channel(third.address) as channel:
            stub = task_service_pb2_grpc.TaskServiceStub(channel)
            task = stub.GetTask(task_service_pb2.GetTaskRequest(task_id=paused.last_task_id), timeout=5).task
        assert task.schedule_id == "every-second"
        assert task.idempotency_key == f"schedule:every-second:{tick_of(paused.last_task_id)}"
        assert task.name == "tests.noop"

    fired = sum(b.metric("conveyor_schedule_ticks_fired_total", queue=queue_name) for b in (second, third))
    assert 0 < fired <= paused.fire_count
    assert second.metric("conveyor_schedules") == third.metric("conveyor_schedules") == 1
    # Whichever replica's pass comes first after a tick fires it: either may have fired them all.
    assert sum(b.metric("conveyor_schedule_fire_lag_seconds_count") for b in (second, third)) > 0


@pytest.fixture
def client_of(make_broker: MakeBroker) -> Iterator[tuple[BrokerProcess, Client]]:
    broker = make_broker()
    with Client(broker.address) as client:
        yield broker, client


def test_ticks_missed_while_paused_follow_each_schedules_policy(
        client_of: tuple[BrokerProcess, Client], queue_name: str) -> None:
    broker, client = client_of
    policies = {missed: f"{queue_name}-{missed.label}" for missed in MissedTicks}
    for missed, queue in policies.items():
        client.put_schedule(missed.label, signature("tests.noop").with_options(queue=queue), every=1, missed=missed)
    for missed in policies:
        eventually(functools.partial(fired_at_least, client, missed.label, 2), timeout=10, interval=0.1)
        client.pause_schedule(missed.label)
    # Paused for more than three ticks: time has to pass, nothing else will do.
    deadline = client.get_schedule(MissedTicks.CATCH_UP.label).updated_at
    assert deadline is not None
    eventually(lambda: datetime.now(UTC) > deadline + timedelta(seconds=3.3), timeout=10, interval=0.1)
    before = {missed: ticks(client, queue) for missed, queue in policies.items()}
    resumed = {missed: ms(client.resume_schedule(missed.label).updated_at) for missed in policies}
    for missed in policies:
        eventually(functools.partial(fired_after, client, missed.label, resumed[missed] + 1000),
                   timeout=10, interval=0.1)
        client.pause_schedule(missed.label)

    for missed, queue in policies.items():
        last_before, resume = before[missed][-1], resumed[missed]
        assert_consecutive(before[missed])
        new = [t for t in ticks(client, queue) if t > last_before]
        in_pause = [t for t in new if t <= resume]
        after = [t for t in new if t > resume]
        missed_ticks = list(range(last_before + 1000, resume + 1, 1000))
        assert len(missed_ticks) >= 3
        expected = {MissedTicks.FIRE_ONCE: missed_ticks[-1:], MissedTicks.SKIP: [],
                    MissedTicks.CATCH_UP: missed_ticks}[missed]
        assert in_pause == expected, missed
        assert after[0] == missed_ticks[-1] + 1000
        assert_consecutive(after)
    skipped = broker.metric("conveyor_schedule_ticks_skipped_total", queue=policies[MissedTicks.SKIP])
    assert skipped >= 3
    assert broker.metric("conveyor_schedule_ticks_skipped_total", queue=policies[MissedTicks.CATCH_UP]) == 0


def test_ticks_missed_while_every_broker_was_down_follow_the_policy(
        make_broker: MakeBroker, redis_client: redis.Redis, queue_name: str) -> None:
    broker = make_broker(schedule_grace_seconds=1)
    queues = {MissedTicks.FIRE_ONCE: f"{queue_name}-once", MissedTicks.CATCH_UP: f"{queue_name}-all"}

    def stored_ticks(queue: str) -> list[int]:
        members: Any = redis_client.hkeys(QueueKeys(broker.namespace, queue).ready)
        return sorted(tick_of(m.decode()) for m in members)

    with Client(broker.address) as client:
        for missed, queue in queues.items():
            client.put_schedule(missed.label, signature("tests.noop").with_options(queue=queue), every=1,
                                missed=missed)
        for missed in queues:
            eventually(functools.partial(fired_at_least, client, missed.label, 2), timeout=10, interval=0.1)
    broker.kill()
    down_since = datetime.now(UTC)
    before = {missed: stored_ticks(queue) for missed, queue in queues.items()}
    # The next tick as the broker left it: the last one submitted, if it died between submit and advance.
    left_at = int(redis_client.hget(ScheduleKeys(broker.namespace).schedule(MissedTicks.FIRE_ONCE.label),
                                    "next") or 0)
    # Down for four ticks, three of them past the one-second grace: only time passing will do.
    eventually(lambda: datetime.now(UTC) > down_since + timedelta(seconds=4), timeout=10, interval=0.1)
    broker.start()
    with Client(broker.address) as client:
        for missed in queues:
            eventually(functools.partial(fired_after, client, missed.label, ms(down_since) + 5000),
                       timeout=10, interval=0.1)
            client.pause_schedule(missed.label)

    once = [t for t in stored_ticks(queues[MissedTicks.FIRE_ONCE]) if t > before[MissedTicks.FIRE_ONCE][-1]]
    gap = list(range(before[MissedTicks.FIRE_ONCE][-1] + 1000, once[0], 1000))
    assert len(gap) >= 2, (before, once)  # skipped: all the missed ticks but the latest, once[0]
    assert_consecutive(once)
    resubmitted = 1 if left_at == before[MissedTicks.FIRE_ONCE][-1] else 0  # that tick counts as missed too
    assert broker.metric("conveyor_schedule_ticks_skipped_total",
                         queue=queues[MissedTicks.FIRE_ONCE]) == len(gap) + resubmitted
    every = stored_ticks(queues[MissedTicks.CATCH_UP])
    assert_consecutive(every)  # caught up: no gap at all
    assert every[-1] > ms(down_since) + 5000
    assert broker.metric("conveyor_schedule_ticks_skipped_total", queue=queues[MissedTicks.CATCH_UP]) == 0


def test_cron_is_read_in_its_time_zone_and_a_seconds_field_ticks_fast(
        client_of: tuple[BrokerProcess, Client], queue_name: str) -> None:
    _, client = client_of
    zone = ZoneInfo("Asia/Kathmandu")  # UTC+05:45: any mistake of zone shows in the minutes
    daily = client.put_schedule("daily", signature("tests.noop").with_options(queue=queue_name),
                                cron="30 9 * * *", timezone="Asia/Kathmandu")
    assert daily.next_fire_at is not None and daily.created_at is not None
    local = daily.next_fire_at.astimezone(zone)
    assert (local.hour, local.minute, local.second) == (9, 30, 0)
    assert timedelta(0) < daily.next_fire_at - daily.created_at <= timedelta(days=1)
    assert daily.timezone == "Asia/Kathmandu" and daily.cron == "30 9 * * *"

    fast = client.put_schedule("fast", signature("tests.noop").with_options(queue=queue_name),
                               cron="* * * * * */2", timezone="Asia/Kathmandu")
    eventually(lambda: client.get_schedule("fast").fire_count >= 2, timeout=10, interval=0.1)
    client.pause_schedule("fast")
    found = eventually(lambda: ticks(client, queue_name), timeout=5)
    assert all(t % 2000 == 0 for t in found)
    assert found[0] == ms(fast.next_fire_at)
    assert_consecutive(found, step=2000)


def test_a_schedule_declared_on_a_task_is_put_by_the_worker_and_runs(
        make_broker: MakeBroker, worker_factory: WorkerFactory, tmp_path: Path) -> None:
    broker = make_broker()
    trace = tmp_path / "ticks.txt"
    worker = worker_factory("tests.integration.schedule_tasks:worker", broker=broker,
                            env={"SCHEDULE_TRACE": str(trace)})
    name = "tests.integration.schedule_tasks.heartbeat"

    def ran_twice() -> bool:
        worker.check_alive()
        return trace.exists() and len(trace.read_text().splitlines()) >= 2

    eventually(ran_twice, timeout=20, interval=0.1)
    with Client(broker.address) as client:
        info = client.get_schedule(name)
        assert (info.task_name, info.queue, info.every, info.missed) == (name, "scheduled", timedelta(seconds=1),
                                                                         MissedTicks.SKIP)
        assert info.fire_count >= 2
        done = [client.get(task_id) for task_id in trace.read_text().split()]
        assert all(t.state is TaskState.SUCCEEDED and t.queue == "scheduled" for t in done)
        assert {t.schedule_id for t in done} == {name}
        assert all(tick_of(t.id) % 1000 == ms(info.next_fire_at) % 1000 for t in done)
    assert worker.terminate() == 0


def test_a_worker_whose_declared_schedule_is_refused_exits_saying_why(
        make_broker: MakeBroker, worker_factory: WorkerFactory) -> None:
    broker = make_broker()
    worker = worker_factory("tests.integration.schedule_tasks:refused", broker=broker)

    assert worker.wait(timeout=20) == 1
    assert "refused the schedule of task" in worker.log and "schedule.cron" in worker.log


def test_schedules_through_the_async_client(fast_broker: BrokerProcess, queue_name: str) -> None:
    async def scenario() -> list[ScheduleInfo]:
        async with AsyncClient(fast_broker.address) as client:
            sig = signature("tests.noop", 1, x=2).with_options(queue=queue_name, priority=3)
            created = await client.put_schedule(f"{queue_name}-a", sig, cron="0 0 1 1 *", description="new year")
            await client.put_schedule(f"{queue_name}-b", sig, every=timedelta(hours=1))
            paused = await client.pause_schedule(f"{queue_name}-a")
            resumed = await client.resume_schedule(f"{queue_name}-a")
            listed = [s async for s in client.list_schedules(page_size=1) if s.id.startswith(queue_name)]
            await client.delete_schedule(f"{queue_name}-b")
            with pytest.raises(NotFoundError):
                await client.get_schedule(f"{queue_name}-b")
            return [created, paused, resumed, *listed]

    created, paused, resumed, *listed = run_async(scenario())
    assert json.loads(created.payload) == {"args": [1], "kwargs": {"x": 2}}
    assert (created.priority, created.description, created.paused) == (3, "new year", False)
    assert paused.paused and paused.next_fire_at is None
    assert not resumed.paused and resumed.next_fire_at == created.next_fire_at
    assert [s.id for s in listed] == [f"{queue_name}-a", f"{queue_name}-b"]


def test_the_cli_creates_lists_shows_pauses_resumes_and_deletes(
        fast_broker: BrokerProcess, queue_name: str, capsys: pytest.CaptureFixture[str]) -> None:
    broker = ["--broker", fast_broker.address]
    sid = f"{queue_name}-cli"

    def run(*argv: str) -> list[dict[str, object]]:
        assert cli_main([*argv, *broker]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    [created] = run("schedule", "create", sid, "--task", "tests.noop", "--queue", queue_name,
                    "--cron", "*/5 * * * *", "--tz", "Europe/Paris", "--args", "[1]", "--missed", "catch-up")
    assert (created["cron"], created["timezone"], created["missed"]) == ("*/5 * * * *", "Europe/Paris", "catch-up")
    assert created["payload"] == {"json": {"args": [1], "kwargs": {}}} and "next_fire_at" in created
    assert sid in [s["id"] for s in run("schedule", "list")]
    assert run("schedule", "show", sid)[0]["fire_count"] == 0
    assert run("schedule", "pause", sid)[0]["paused"] is True
    assert run("schedule", "resume", sid)[0]["paused"] is False
    assert run("schedule", "delete", sid) == [{"id": sid, "deleted": True}]

    assert cli_main(["schedule", "show", sid, *broker]) == 2
    assert json.loads(capsys.readouterr().err)["error"] == "NotFoundError"
    assert cli_main(["schedule", "create", sid, "--task", "t", "--cron", "* * 99 * *", *broker]) == 2
    error = json.loads(capsys.readouterr().err)
    assert error["field"] == "schedule.cron" and "out of range" in error["message"]
    assert cli_main(["schedule", "create", sid, "--task", "t", *broker]) == 2  # no trigger: usage


@pytest.mark.parametrize(("options", "field", "words"), [
    ({"cron": "61 * * * *"}, "schedule.cron", "out of range"),
    ({"cron": "* * *"}, "schedule.cron", "expected 5 fields"),
    ({"cron": "0 0 30 2 *"}, "schedule.cron", "never fires"),
    ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "schedule.time_zone", "unknown IANA time zone"),
    ({"every": timedelta(days=400)}, "schedule.interval", "366 days"),
    ({"every": 1, "description": "x" * 1025}, "schedule.description", "1024"),
])
def test_bad_schedules_are_refused_naming_the_field(
        fast_client: Client, queue_name: str, options: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        fast_client.put_schedule(queue_name, signature("tests.noop").with_options(queue=queue_name),
                                 **options)  # type: ignore[arg-type]
    assert caught.value.field == field and words in caught.value.message
    with pytest.raises(NotFoundError):
        fast_client.get_schedule(queue_name)  # nothing half-written


def test_raw_requests_with_fields_no_sdk_would_send_are_refused(fast_broker: BrokerProcess, queue_name: str) -> None:
    task = task_service_pb2.TaskSpec(queue=queue_name, name="tests.noop")
    with_delay = task_service_pb2.TaskSpec(queue=queue_name, name="tests.noop", delay={"seconds": 5})
    with_key = task_service_pb2.TaskSpec(queue=queue_name, name="tests.noop", idempotency_key="k")
    cases = [
        (adm.PutScheduleRequest(), "schedule"),
        (adm.PutScheduleRequest(schedule=adm.ScheduleSpec(id=queue_name, cron="* * * * *")), "schedule.task"),
        (adm.PutScheduleRequest(schedule=adm.ScheduleSpec(id=queue_name, task=task)), "schedule.cron"),
        (adm.PutScheduleRequest(schedule=adm.ScheduleSpec(id=queue_name, task=with_delay, cron="* * * * *")),
         "schedule.task.delay"),
        (adm.PutScheduleRequest(schedule=adm.ScheduleSpec(id=queue_name, task=with_key, cron="* * * * *")),
         "schedule.task.idempotency_key"),
        (adm.PutScheduleRequest(schedule=adm.ScheduleSpec(id=queue_name, task=task, cron="* * * * *",
                                                          missed_ticks=9)), "schedule.missed_ticks"),
        (adm.PutScheduleRequest(schedule=adm.ScheduleSpec(id=queue_name, task=task, interval={"seconds": -1})),
         "schedule.interval"),
        (adm.ListSchedulesRequest(page_token="!!"), "page_token"),
    ]
    with grpc.insecure_channel(fast_broker.address) as channel:
        stub = adm_grpc.AdminServiceStub(channel)
        for request, field in cases:
            method = stub.PutSchedule if isinstance(request, adm.PutScheduleRequest) else stub.ListSchedules
            with pytest.raises(grpc.RpcError) as caught:
                method(request, timeout=5)
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, field
            assert caught.value.details().startswith(f"{field}: "), caught.value.details()


def test_bad_ids_task_fields_and_unknown_schedules(fast_client: Client, queue_name: str) -> None:
    sig = signature("tests.noop").with_options(queue=queue_name)
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: fast_client.put_schedule("bad id", sig, every=1), "schedule.id"),
        (lambda: fast_client.put_schedule(queue_name, signature("tests.noop").with_options(queue="no/slash"),
                                          every=1), "schedule.task.queue"),
        (lambda: fast_client.get_schedule("x" * 129), "id"),
    ]
    for call, field in cases:
        with pytest.raises(InvalidArgumentError) as caught:
            call()
        assert caught.value.field == field
    for call_name in ("get_schedule", "pause_schedule", "resume_schedule", "delete_schedule"):
        with pytest.raises(NotFoundError):
            getattr(fast_client, call_name)(f"{queue_name}-unknown")
    with pytest.raises(ValueError, match="delay"):
        fast_client.put_schedule(queue_name, sig.with_options(delay=5), every=1)
    with pytest.raises(InvalidArgumentError) as caught:
        next(fast_client.list_schedules(page_size=1001))
    assert caught.value.field == "page_size"
    with pytest.raises(ValueError, match="exactly one of cron and every"):
        fast_client.put_schedule(queue_name, sig)

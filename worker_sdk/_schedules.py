"""Schedules declared beside their tasks (``@task(cron=...)``): put on the broker when a worker starts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import grpc

from client_sdk import AsyncClient, InvalidArgumentError, TaskDefinition
from client_sdk._errors import DeadlineExceededError, UnavailableError
from worker_sdk._session import backoff_delays
from worker_sdk.errors import WorkerError

logger = logging.getLogger(__name__)


async def put_declared(registry: Mapping[str, TaskDefinition[..., Any]], broker: str,
                       credentials: grpc.ChannelCredentials | None) -> int:
    """Puts the schedule of every task that declares one, retrying while the broker is unreachable.

    A replaced schedule keeps its next tick when its trigger is unchanged, so every worker of a
    fleet may put the same schedules as it starts.

    Returns:
        How many schedules were put.

    Raises:
        WorkerError: If the broker refused a schedule (a bad cron expression or time zone).
    """
    declared = [d for d in registry.values() if d.schedule is not None]
    if not declared:
        return 0
    async with AsyncClient(broker, credentials=credentials) as client:
        for definition in declared:
            trigger = definition.schedule
            schedule_id = definition.schedule_id
            assert trigger is not None and schedule_id is not None
            delays = backoff_delays()
            while True:
                try:
                    info = await client.put_schedule(
                        schedule_id, definition, cron=trigger.cron, every=trigger.every, timezone=trigger.timezone,
                        missed=trigger.missed, description=trigger.description)
                    break
                except InvalidArgumentError as exc:
                    raise WorkerError(f"the broker refused the schedule of task {definition.name!r}: "
                                      f"{exc.message}") from exc
                except (UnavailableError, DeadlineExceededError) as exc:
                    logger.debug("putting schedule %s: broker unavailable, retrying: %s", schedule_id, exc)
                    await asyncio.sleep(next(delays))
            logger.info("schedule put schedule_id=%s task=%s next_fire_at=%s", schedule_id, definition.name,
                        info.next_fire_at.isoformat() if info.next_fire_at else "paused")
    return len(declared)

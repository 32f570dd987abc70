"""A worker whose task declares its own schedule (`@task(every=...)`), for the schedule tests.

The task appends a line to the file named by $SCHEDULE_TRACE, so the test sees each tick run.
"""

from __future__ import annotations

import os
from datetime import timedelta

from worker_sdk import Worker, current_task, task


@task(queue="scheduled", every=timedelta(seconds=1), missed="skip")
def heartbeat() -> str:
    """Records the id of the task a tick submitted."""
    task_id = current_task().id
    with open(os.environ["SCHEDULE_TRACE"], "a", encoding="utf-8") as f:
        f.write(task_id + "\n")
    return task_id


worker = Worker(tasks=[heartbeat])


@task(queue="scheduled", cron="0 25 * * *", schedule_id="never-valid")
def misscheduled() -> None:
    """Declares an hour that does not exist: the broker refuses its schedule."""


refused = Worker(tasks=[misscheduled])

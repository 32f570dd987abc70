"""Every metric the broker exports, registered on an injected registry (nothing at import time)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Run times reach an hour and beyond: tasks are often long.
RUN_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)
# How late a tick's task was submitted: a pass every quarter second, hours after a downtime.
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 86400)


class Metrics:
    """The broker's metrics. Labels stay low-cardinality: queue, state, reason, never a task id."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.enqueued = Counter("conveyor_tasks_enqueued", "Tasks submitted.", ["queue"], registry=r)
        self.completed = Counter("conveyor_tasks_completed", "Tasks that succeeded.", ["queue"], registry=r)
        self.failed = Counter("conveyor_tasks_failed",
                              "Tasks that failed for good (moved to the dead-letter set).", ["queue"], registry=r)
        self.retried = Counter("conveyor_tasks_retried", "Failed attempts that will be retried.",
                               ["queue"], registry=r)
        self.cancelled = Counter("conveyor_tasks_cancelled", "Tasks cancelled.", ["queue"], registry=r)
        self.expired = Counter("conveyor_tasks_expired",
                               "Tasks not started before their schedule-to-start deadline.", ["queue"], registry=r)
        self.redeliveries = Counter("conveyor_redeliveries", "Tasks put back into their queue, by reason.",
                                    ["queue", "reason"], registry=r)
        self.stale_rejections = Counter("conveyor_lease_stale_rejections",
                                        "Outcomes, extensions or progress refused for a stale lease token.",
                                        ["queue"], registry=r)
        self.depth = Gauge("conveyor_queue_depth", "Tasks in each state of each queue.",
                           ["queue", "state"], registry=r)
        self.run_seconds = Histogram("conveyor_task_run_seconds", "Run time of successful attempts.",
                                     ["queue"], buckets=RUN_BUCKETS, registry=r)
        self.wait_seconds = Histogram("conveyor_task_queue_wait_seconds",
                                      "Time from ready to leased (queue wait).", ["queue"],
                                      buckets=WAIT_BUCKETS, registry=r)
        self.workers = Gauge("conveyor_workers_connected", "Worker streams connected to this broker.",
                             registry=r)
        self.store_errors = Counter("conveyor_store_errors",
                                    "Readiness checks of Redis that failed (unreachable or timed out).", registry=r)
        self.store_up = Gauge("conveyor_store_up", "1 while the last readiness check reached Redis, else 0.",
                              registry=r)
        # Locks and limits.
        self.duplicates = Counter("conveyor_duplicate_submits",
                                  "Submits answered with an existing task, by the key that matched "
                                  "(idempotency, unique).", ["queue", "kind"], registry=r)
        self.held = Gauge("conveyor_queue_held_tasks",
                          "Ready tasks held back because their concurrency key is at its limit.",
                          ["queue"], registry=r)
        self.handoffs = Counter("conveyor_submit_handoffs",
                                "Submitted tasks leased to a worker of this broker in the submit's own store call.",
                                ["queue"], registry=r)
        self.lease_deferrals = Counter("conveyor_lease_deferrals",
                                       "Lease calls that left ready tasks waiting because of a queue limit "
                                       "(rate, max_running).", ["queue", "limit"], registry=r)
        # Schedules.
        self.schedule_ticks_fired = Counter("conveyor_schedule_ticks_fired",
                                            "Schedule ticks that submitted their task, by target queue.",
                                            ["queue"], registry=r)
        self.schedule_ticks_skipped = Counter("conveyor_schedule_ticks_skipped",
                                              "Missed schedule ticks not submitted (missed-tick policy).",
                                              ["queue"], registry=r)
        self.schedule_fire_lag = Histogram("conveyor_schedule_fire_lag_seconds",
                                           "Time from a tick to the submission of its task.",
                                           buckets=LAG_BUCKETS, registry=r)
        self.schedules = Gauge("conveyor_schedules", "Schedules defined (paused ones included).", registry=r)
        # Workflows.
        self.workflows_submitted = Counter("conveyor_workflows_submitted", "Workflows submitted.", registry=r)
        self.workflows_finished = Counter("conveyor_workflows_finished",
                                          "Workflows that reached a final state, by state.", ["state"], registry=r)
        self.workflow_releases = Counter("conveyor_workflow_node_releases",
                                         "Workflow nodes released into their queue (roots, and children whose "
                                         "parents all succeeded).", ["queue"], registry=r)
        self.workflow_repairs = Counter("conveyor_workflow_repairs",
                                        "Workflow steps the reconciler finished that the fast path had not, by "
                                        "kind (outbox, release, cancel, aborted).", ["kind"], registry=r)
        # Client sessions (TaskService.OpenSession): how many are open and how well calls coalesce.
        self.client_sessions = Gauge("conveyor_client_sessions_open",
                                     "Client sessions (OpenSession streams) open on this broker.", registry=r)
        self.session_messages = Counter("conveyor_client_session_messages",
                                        "Messages (batches of calls) received on client sessions.", registry=r)
        self.session_calls = Counter("conveyor_client_session_calls", "Calls received on client sessions, by kind.",
                                     ["kind"], registry=r)
        self.session_enqueue_writes = Counter("conveyor_client_session_enqueue_writes",
                                              "Store writes of session submits (one per queue per coalesced batch).",
                                              registry=r)

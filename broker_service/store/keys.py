"""Every Redis key and channel name Conveyor uses, built here and nowhere else (schema: lua/KEYS.md)."""

from __future__ import annotations

from dataclasses import dataclass

from broker_service.domain import TaskState


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """The keys of one queue. All share the hash tag `{<namespace>:<queue>}`, so one slot holds them."""

    namespace: str
    queue: str

    @property
    def tag(self) -> str:
        return f"{{{self.namespace}:{self.queue}}}"

    @property
    def task_prefix(self) -> str:
        """HASH per task: `<tag>:t:<ulid>`. Scripts receive this prefix as a KEYS entry."""
        return f"{self.tag}:t:"

    def task(self, ulid: str) -> str:
        return self.task_prefix + ulid

    @property
    def ready(self) -> str:
        """HASH of ready tasks: ulid -> the task's record, packed (msgpack; layout in KEYS.md). A
        ready task has no task hash of its own: this is most of a waiting queue's memory."""
        return f"{self.tag}:ready"

    @property
    def ready_lists(self) -> str:
        """LIST per priority: `<tag>:ready:<0..9>`, ready ulids in lease order (leased from the
        head). An entry whose ulid is no longer in `ready` is stale and skipped. Scripts receive
        this prefix as a KEYS entry."""
        return f"{self.tag}:ready:"

    def ready_list(self, priority: int) -> str:
        return f"{self.ready_lists}{priority}"

    @property
    def queued(self) -> str:
        """ZSET of ready tasks as brokers before 0.8 kept them (member ulid, score (9 - priority) *
        1e13 + ready ms, each with its task hash): promote.lua moves them into `ready`."""
        return f"{self.tag}:queued"

    @property
    def scheduled(self) -> str:
        """ZSET of delayed and backing-off tasks: member ulid, score due ms."""
        return f"{self.tag}:scheduled"

    @property
    def running(self) -> str:
        """ZSET of leased tasks: member ulid, score min(lease deadline, execution deadline) ms."""
        return f"{self.tag}:running"

    @property
    def start_deadlines(self) -> str:
        """ZSET of waiting tasks with a schedule-to-start deadline: member ulid, score deadline ms."""
        return f"{self.tag}:start_by"

    @property
    def pending(self) -> str:
        """ZSET of workflow nodes waiting for their parents: member ulid, score created ms."""
        return f"{self.tag}:pending"

    @property
    def wf_outbox(self) -> str:
        """ZSET of this queue's workflow nodes that ended and whose workflow has not yet advanced:
        member ulid, score the ms the node ended."""
        return f"{self.tag}:wf_outbox"

    def finished(self, state: TaskState) -> str:
        """ZSET per terminal state: member ulid, score the ms at which the record expires."""
        return f"{self.tag}:{state.label}"

    @property
    def succeeded(self) -> str:
        return self.finished(TaskState.SUCCEEDED)

    @property
    def failed(self) -> str:
        """The dead-letter set."""
        return self.finished(TaskState.FAILED)

    @property
    def cancelled(self) -> str:
        return self.finished(TaskState.CANCELLED)

    @property
    def expired(self) -> str:
        return self.finished(TaskState.EXPIRED)

    @property
    def sequence(self) -> str:
        """STRING counter: the source of lease (fencing) tokens."""
        return f"{self.tag}:seq"

    @property
    def events(self) -> str:
        """Pub/sub channel of the queue's state changes (see KEYS.md for the message format)."""
        return f"{self.tag}:events"

    @property
    def running_events(self) -> str:
        """Pub/sub channel of the queue's `running` events alone: only task and workflow watchers
        read them, so a broker subscribes to it only once it has one (see EventHub)."""
        return f"{self.tag}:events:running"

    # Locks and limits. The four prefixes below are completed with a user's key inside the
    # scripts, the same exception as `task_prefix`: the tag comes first, so the slot stays the queue's.

    @property
    def idem_prefix(self) -> str:
        """STRING per idempotency key: `<tag>:idem:<key>` -> ulid of the task it answers, PX its TTL."""
        return f"{self.tag}:idem:"

    @property
    def uniq_prefix(self) -> str:
        """STRING per unique key: `<tag>:uniq:<key>` -> ulid of the waiting or running task that holds it."""
        return f"{self.tag}:uniq:"

    @property
    def conc_prefix(self) -> str:
        """SET per concurrency key: `<tag>:conc:<key>` -> ulids of the running tasks with that key."""
        return f"{self.tag}:conc:"

    @property
    def held_prefix(self) -> str:
        """ZSET per concurrency key: `<tag>:held:<key>` -> tasks held back at the key's limit, queued score."""
        return f"{self.tag}:held:"

    @property
    def held(self) -> str:
        """ZSET of every task held back by its concurrency key (listed and counted as queued)."""
        return f"{self.tag}:held"

    @property
    def limits(self) -> str:
        """HASH of the queue's limits: `max_running`, `rate` (tasks/s), `burst`; absent = none."""
        return f"{self.tag}:limits"

    @property
    def bucket(self) -> str:
        """HASH of the rate limit's token bucket: `tokens`, `ts` (Redis TIME, microseconds)."""
        return f"{self.tag}:bucket"

    def by_state(self, state: TaskState) -> str:
        """The index that holds the queue's tasks in `state`."""
        return {
            TaskState.QUEUED: self.ready,
            TaskState.SCHEDULED: self.scheduled,
            TaskState.RUNNING: self.running,
        }.get(state) or self.finished(state)


@dataclass(frozen=True, slots=True)
class GlobalKeys:
    """Keys outside any queue (each touched by single-key commands only)."""

    namespace: str

    @property
    def queues(self) -> str:
        """SET of every queue name ever submitted to (the loops sweep these)."""
        return f"{self.namespace}:queues"

    def queue(self, name: str) -> QueueKeys:
        return QueueKeys(self.namespace, name)

    def workflow(self, workflow_id: str) -> WorkflowKeys:
        return WorkflowKeys(self.namespace, workflow_id)

    def workflow_idempotency(self, key: str) -> str:
        """STRING: a workflow idempotency key -> the workflow id it created (PX its TTL). One fixed
        slot (tag `{<ns>::wf_idem}`: the double colon keeps it apart from any queue's tag), touched
        by single-key commands only."""
        return f"{{{self.namespace}::wf_idem}}:{key}"


@dataclass(frozen=True, slots=True)
class ScheduleKeys:
    """The keys of every schedule. All share the hash tag `{<namespace>::schedules}` (one slot); the
    double colon keeps it apart from any queue's tag, since queue names hold no ':'."""

    namespace: str

    @property
    def tag(self) -> str:
        return f"{{{self.namespace}::schedules}}"

    def schedule(self, schedule_id: str) -> str:
        """HASH per schedule: its spec and state (fields in KEYS.md)."""
        return f"{self.tag}:s:{schedule_id}"

    @property
    def due(self) -> str:
        """ZSET of active (not paused) schedules: member id, score next fire ms."""
        return f"{self.tag}:due"

    @property
    def ids(self) -> str:
        """ZSET of every schedule id, all scored 0, so ZRANGEBYLEX pages them by id."""
        return f"{self.tag}:ids"


@dataclass(frozen=True, slots=True)
class WorkflowKeys:
    """The keys of one workflow, under its own hash tag `{<namespace>:wf:<id>}`: the id leads to the
    slot without a lookup. Queue names cannot contain ':', so no queue tag looks like this."""

    namespace: str
    workflow_id: str

    @property
    def tag(self) -> str:
        return f"{{{self.namespace}:wf:{self.workflow_id}}}"

    @property
    def record(self) -> str:
        """HASH: the workflow record and its nodes (fields in lua/KEYS.md)."""
        return f"{self.tag}:w"

    @property
    def events(self) -> str:
        """Pub/sub channel of the workflow's changes; it matches the queues' event pattern, so the
        EventHub delivers it as the events of queue `wf:<id>`."""
        return f"{self.tag}:events"

import datetime

from conveyor.v1 import task_pb2 as _task_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LeaseState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LEASE_STATE_UNSPECIFIED: _ClassVar[LeaseState]
    LEASE_STATE_ACTIVE: _ClassVar[LeaseState]
    LEASE_STATE_STALE: _ClassVar[LeaseState]
    LEASE_STATE_CANCEL_REQUESTED: _ClassVar[LeaseState]

class OutcomeStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_STATUS_UNSPECIFIED: _ClassVar[OutcomeStatus]
    OUTCOME_STATUS_ACCEPTED: _ClassVar[OutcomeStatus]
    OUTCOME_STATUS_STALE: _ClassVar[OutcomeStatus]
LEASE_STATE_UNSPECIFIED: LeaseState
LEASE_STATE_ACTIVE: LeaseState
LEASE_STATE_STALE: LeaseState
LEASE_STATE_CANCEL_REQUESTED: LeaseState
OUTCOME_STATUS_UNSPECIFIED: OutcomeStatus
OUTCOME_STATUS_ACCEPTED: OutcomeStatus
OUTCOME_STATUS_STALE: OutcomeStatus

class LeaseRef(_message.Message):
    __slots__ = ("task_id", "lease_token")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    lease_token: int
    def __init__(self, task_id: _Optional[str] = ..., lease_token: _Optional[int] = ...) -> None: ...

class WorkerMessage(_message.Message):
    __slots__ = ("hello", "credit", "heartbeat", "outcomes", "release", "progress")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    credit: Credit
    heartbeat: Heartbeat
    outcomes: Outcomes
    release: Release
    progress: Progress
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., credit: _Optional[_Union[Credit, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., outcomes: _Optional[_Union[Outcomes, _Mapping]] = ..., release: _Optional[_Union[Release, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("worker_id", "queues", "task_names", "concurrency", "claims", "hostname", "pid", "sdk", "acks_ride")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    TASK_NAMES_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    SDK_FIELD_NUMBER: _ClassVar[int]
    ACKS_RIDE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    queues: _containers.RepeatedScalarFieldContainer[str]
    task_names: _containers.RepeatedScalarFieldContainer[str]
    concurrency: int
    claims: _containers.RepeatedCompositeFieldContainer[LeaseRef]
    hostname: str
    pid: int
    sdk: str
    acks_ride: bool
    def __init__(self, worker_id: _Optional[str] = ..., queues: _Optional[_Iterable[str]] = ..., task_names: _Optional[_Iterable[str]] = ..., concurrency: _Optional[int] = ..., claims: _Optional[_Iterable[_Union[LeaseRef, _Mapping]]] = ..., hostname: _Optional[str] = ..., pid: _Optional[int] = ..., sdk: _Optional[str] = ..., acks_ride: _Optional[bool] = ...) -> None: ...

class Credit(_message.Message):
    __slots__ = ("credits",)
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    credits: int
    def __init__(self, credits: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("leases",)
    LEASES_FIELD_NUMBER: _ClassVar[int]
    leases: _containers.RepeatedCompositeFieldContainer[LeaseRef]
    def __init__(self, leases: _Optional[_Iterable[_Union[LeaseRef, _Mapping]]] = ...) -> None: ...

class Outcome(_message.Message):
    __slots__ = ("task_id", "lease_token", "success", "failure", "cancelled")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    lease_token: int
    success: Success
    failure: Failure
    cancelled: Cancelled
    def __init__(self, task_id: _Optional[str] = ..., lease_token: _Optional[int] = ..., success: _Optional[_Union[Success, _Mapping]] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ..., cancelled: _Optional[_Union[Cancelled, _Mapping]] = ...) -> None: ...

class Success(_message.Message):
    __slots__ = ("payload", "content_type")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    content_type: str
    def __init__(self, payload: _Optional[bytes] = ..., content_type: _Optional[str] = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("error", "retry_after")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    error: _task_pb2.TaskError
    retry_after: _duration_pb2.Duration
    def __init__(self, error: _Optional[_Union[_task_pb2.TaskError, _Mapping]] = ..., retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Cancelled(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Outcomes(_message.Message):
    __slots__ = ("outcomes", "credits")
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[Outcome]
    credits: int
    def __init__(self, outcomes: _Optional[_Iterable[_Union[Outcome, _Mapping]]] = ..., credits: _Optional[int] = ...) -> None: ...

class Release(_message.Message):
    __slots__ = ("leases", "reason", "started")
    LEASES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    leases: _containers.RepeatedCompositeFieldContainer[LeaseRef]
    reason: str
    started: bool
    def __init__(self, leases: _Optional[_Iterable[_Union[LeaseRef, _Mapping]]] = ..., reason: _Optional[str] = ..., started: _Optional[bool] = ...) -> None: ...

class ProgressUpdate(_message.Message):
    __slots__ = ("task_id", "lease_token", "progress", "message")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    lease_token: int
    progress: float
    message: str
    def __init__(self, task_id: _Optional[str] = ..., lease_token: _Optional[int] = ..., progress: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("updates",)
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    updates: _containers.RepeatedCompositeFieldContainer[ProgressUpdate]
    def __init__(self, updates: _Optional[_Iterable[_Union[ProgressUpdate, _Mapping]]] = ...) -> None: ...

class BrokerMessage(_message.Message):
    __slots__ = ("welcome", "assignments", "cancel", "lease_statuses", "outcome_acks", "drain", "acks")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    LEASE_STATUSES_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_ACKS_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    assignments: Assignments
    cancel: CancelTasks
    lease_statuses: LeaseStatuses
    outcome_acks: OutcomeAcks
    drain: Drain
    acks: _containers.RepeatedCompositeFieldContainer[OutcomeAcks]
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., assignments: _Optional[_Union[Assignments, _Mapping]] = ..., cancel: _Optional[_Union[CancelTasks, _Mapping]] = ..., lease_statuses: _Optional[_Union[LeaseStatuses, _Mapping]] = ..., outcome_acks: _Optional[_Union[OutcomeAcks, _Mapping]] = ..., drain: _Optional[_Union[Drain, _Mapping]] = ..., acks: _Optional[_Iterable[_Union[OutcomeAcks, _Mapping]]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("broker_id", "heartbeat_interval", "claims", "outcome_credits")
    BROKER_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_CREDITS_FIELD_NUMBER: _ClassVar[int]
    broker_id: str
    heartbeat_interval: _duration_pb2.Duration
    claims: _containers.RepeatedCompositeFieldContainer[LeaseStatus]
    outcome_credits: bool
    def __init__(self, broker_id: _Optional[str] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., claims: _Optional[_Iterable[_Union[LeaseStatus, _Mapping]]] = ..., outcome_credits: _Optional[bool] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("task_id", "queue", "name", "payload", "content_type", "headers", "attempt", "max_attempts", "lease_token", "lease_duration", "execution_timeout", "parent_results", "result_passing")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    PARENT_RESULTS_FIELD_NUMBER: _ClassVar[int]
    RESULT_PASSING_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    queue: str
    name: str
    payload: bytes
    content_type: str
    headers: _containers.ScalarMap[str, str]
    attempt: int
    max_attempts: int
    lease_token: int
    lease_duration: _duration_pb2.Duration
    execution_timeout: _duration_pb2.Duration
    parent_results: _containers.RepeatedCompositeFieldContainer[ParentResult]
    result_passing: _task_pb2.ResultPassing
    def __init__(self, task_id: _Optional[str] = ..., queue: _Optional[str] = ..., name: _Optional[str] = ..., payload: _Optional[bytes] = ..., content_type: _Optional[str] = ..., headers: _Optional[_Mapping[str, str]] = ..., attempt: _Optional[int] = ..., max_attempts: _Optional[int] = ..., lease_token: _Optional[int] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., execution_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., parent_results: _Optional[_Iterable[_Union[ParentResult, _Mapping]]] = ..., result_passing: _Optional[_Union[_task_pb2.ResultPassing, str]] = ...) -> None: ...

class ParentResult(_message.Message):
    __slots__ = ("task_id", "node", "payload", "content_type")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    node: str
    payload: bytes
    content_type: str
    def __init__(self, task_id: _Optional[str] = ..., node: _Optional[str] = ..., payload: _Optional[bytes] = ..., content_type: _Optional[str] = ...) -> None: ...

class Assignments(_message.Message):
    __slots__ = ("assignments",)
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[Assignment]
    def __init__(self, assignments: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ...) -> None: ...

class CancelTasks(_message.Message):
    __slots__ = ("task_ids",)
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class LeaseStatus(_message.Message):
    __slots__ = ("task_id", "state")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    state: LeaseState
    def __init__(self, task_id: _Optional[str] = ..., state: _Optional[_Union[LeaseState, str]] = ...) -> None: ...

class LeaseStatuses(_message.Message):
    __slots__ = ("statuses",)
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    statuses: _containers.RepeatedCompositeFieldContainer[LeaseStatus]
    def __init__(self, statuses: _Optional[_Iterable[_Union[LeaseStatus, _Mapping]]] = ...) -> None: ...

class OutcomeAck(_message.Message):
    __slots__ = ("task_id", "status")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    status: OutcomeStatus
    def __init__(self, task_id: _Optional[str] = ..., status: _Optional[_Union[OutcomeStatus, str]] = ...) -> None: ...

class OutcomeAcks(_message.Message):
    __slots__ = ("acks",)
    ACKS_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[OutcomeAck]
    def __init__(self, acks: _Optional[_Iterable[_Union[OutcomeAck, _Mapping]]] = ...) -> None: ...

class Drain(_message.Message):
    __slots__ = ("reason", "grace")
    REASON_FIELD_NUMBER: _ClassVar[int]
    GRACE_FIELD_NUMBER: _ClassVar[int]
    reason: str
    grace: _duration_pb2.Duration
    def __init__(self, reason: _Optional[str] = ..., grace: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

"""WorkflowService: submit, read, await and cancel DAGs of tasks."""

from __future__ import annotations

from typing import Any

from conveyor.v1 import workflow_service_pb2_grpc as wf_grpc

from broker_service.api import validate
from broker_service.events import EventHub
from broker_service.metrics import Metrics
from broker_service.store.store import Store

Context = Any  # grpc.aio.ServicerContext (grpc ships no type information)


class WorkflowService(wf_grpc.WorkflowServiceServicer):
    """conveyor.v1.WorkflowService. RPCs not written yet answer UNIMPLEMENTED (the generated base)."""

    def __init__(self, store: Store, hub: EventHub, metrics: Metrics, limits: validate.Limits) -> None:
        self._store = store
        self._hub = hub
        self._metrics = metrics
        self._limits = limits

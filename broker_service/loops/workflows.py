"""The workflow reconciler: finishes releases and cancellations that a crash interrupted."""

from __future__ import annotations

from broker_service.loops import PeriodicLoop
from broker_service.workflows import Workflows


class WorkflowReconciler(PeriodicLoop):
    name = "workflow-reconciler"

    def __init__(self, workflows: Workflows, interval: float) -> None:
        super().__init__(interval)
        self._workflows = workflows

    async def tick(self) -> None:
        await self._workflows.reconcile()

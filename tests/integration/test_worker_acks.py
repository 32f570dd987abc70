"""Outcome acknowledgements on a bare worker stream: alone, or riding along with the next tasks.

A worker whose Hello sets `acks_ride` may get an Outcomes message's acks in `BrokerMessage.acks`
of the next Assignments (held a few milliseconds for one to come); a worker that does not (an
older SDK) always gets them as `outcome_acks` messages. Either way each Outcomes message is
answered once, in order.
"""

from __future__ import annotations

import pytest
from conveyor.v1 import worker_service_pb2 as wpb

from client_sdk import Client, TaskState
from tests.faults.raw import RawWorker
from tests.helpers import BrokerProcess

TASKS = 20


def _success(assignment: wpb.Assignment) -> wpb.Outcome:
    return wpb.Outcome(task_id=assignment.task_id, lease_token=assignment.lease_token,
                       success=wpb.Success(payload=b"1", content_type="application/json"))


@pytest.mark.parametrize("acks_ride", [True, False], ids=["acks-ride", "acks-alone"])
def test_every_outcome_is_acknowledged_once_in_order(
    acks_ride: bool, fast_broker: BrokerProcess, fast_client: Client, queue_name: str,
) -> None:
    handles = [fast_client.submit(queue_name, "app.noop", b"[]") for _ in range(TASKS)]
    acked: list[tuple[str, int]] = []
    ridden = 0
    with RawWorker(fast_broker.address, worker_id=f"raw-{queue_name}", queues=[queue_name],
                   acks_ride=acks_ride) as raw:
        raw.send(credit=wpb.Credit(credits=1))
        sent: list[str] = []
        while len(acked) < TASKS:
            message = raw.next("assignments or acks")
            for acks in message.acks:
                acked += [(a.task_id, a.status) for a in acks.acks]
                ridden += 1
            kind = message.WhichOneof("kind")
            if kind == "outcome_acks":
                acked += [(a.task_id, a.status) for a in message.outcome_acks.acks]
            elif kind == "assignments":
                for assignment in message.assignments.assignments:
                    # One outcome per message, granting the slot back with it.
                    raw.send(outcomes=wpb.Outcomes(outcomes=[_success(assignment)], credits=1))
                    sent.append(assignment.task_id)

    assert sent == [h.id for h in handles]
    assert acked == [(h.id, wpb.OUTCOME_STATUS_ACCEPTED) for h in handles]
    if acks_ride:
        # Every outcome but the last had a task coming right after it to ride along with.
        assert ridden > 0
        assert message.WhichOneof("kind") == "outcome_acks"  # the last one, with nothing to ride on
    else:
        assert ridden == 0
    assert all(fast_client.get(h.id).state is TaskState.SUCCEEDED for h in handles)

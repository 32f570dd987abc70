"""Prometheus metrics: the counts, gauges and histograms a broker exports after real work, and their names."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from client_sdk import Client, TaskFailedError
from tests.helpers import eventually, metric_value, read_metrics
from tests.integration.conftest import MakeBroker, StartWorker
from worker_sdk.examples import add, always_fails, sleep_then_add


def test_metrics_count_enqueued_completed_failed_and_retried_tasks_by_queue(
    make_broker: MakeBroker, start_worker: StartWorker, queue_name: str, tmp_path: Path
) -> None:
    broker = make_broker()
    assert broker.metrics_url is not None
    idle_queue = queue_name + "-idle"
    worker = start_worker(queue_name, broker=broker)
    broker.wait_for_workers(1, watch=[worker])

    with Client(broker.address) as client:
        handles = [client.enqueue(add.with_options(queue=queue_name), i, i) for i in range(4)]
        handles.append(client.enqueue(sleep_then_add.with_options(queue=queue_name), 1, 1, 0.3))
        assert [h.result(timeout=15) for h in handles] == [0, 2, 4, 6, 2]
        doomed = client.enqueue(always_fails.with_options(queue=queue_name, max_attempts=2, retry_backoff=0.1))
        with pytest.raises(TaskFailedError):
            doomed.result(timeout=15)
        client.enqueue_many(add.with_options(queue=idle_queue).s(i, i) for i in range(3))

    metrics = broker.metrics()

    def value(name: str, **labels: str) -> float:
        return metric_value(metrics, name, **labels)

    assert value("conveyor_tasks_enqueued_total", queue=queue_name) == 6
    assert value("conveyor_tasks_enqueued_total", queue=idle_queue) == 3
    assert value("conveyor_tasks_completed_total", queue=queue_name) == 5
    assert value("conveyor_tasks_failed_total", queue=queue_name) == 1
    assert value("conveyor_tasks_retried_total", queue=queue_name) == 1
    assert value("conveyor_tasks_completed_total", queue=idle_queue) == 0
    assert value("conveyor_workers_connected") == 1
    # Run time of the successful attempts: five of them, one of which slept 0.3 s.
    assert value("conveyor_task_run_seconds_count", queue=queue_name) == 5
    assert 0.3 <= value("conveyor_task_run_seconds_sum", queue=queue_name) < 3
    assert value("conveyor_task_run_seconds_bucket", queue=queue_name, le="0.25") == 4
    assert value("conveyor_task_run_seconds_bucket", queue=queue_name, le="+Inf") == 5
    # Every attempt (7: five successes, two failures) waited in the queue first.
    assert value("conveyor_task_queue_wait_seconds_count", queue=queue_name) == 7

    # Queue depth is sampled by a background sweep: the idle queue holds 3, the busy one none.
    def depths_settled() -> bool:
        now = broker.metrics()
        return (metric_value(now, "conveyor_queue_depth", queue=idle_queue, state="queued") == 3
                and metric_value(now, "conveyor_queue_depth", queue=queue_name, state="queued") == 0
                and metric_value(now, "conveyor_queue_depth", queue=queue_name, state="running") == 0
                and metric_value(now, "conveyor_queue_depth", queue=queue_name, state="failed") == 1)

    eventually(depths_settled, timeout=12, interval=0.25)

    assert worker.terminate(timeout=15) == 0
    eventually(lambda: broker.metric("conveyor_workers_connected") == 0, timeout=10)


def test_metric_names_follow_prometheus_conventions(make_broker: MakeBroker, queue_name: str) -> None:
    broker = make_broker()
    assert broker.metrics_url is not None
    with Client(broker.address) as client:
        client.enqueue(add.with_options(queue=queue_name), 1, 1)  # so labelled series exist
    with urllib.request.urlopen(broker.metrics_url, timeout=5) as response:
        assert response.headers.get_content_type() == "text/plain"
        text = response.read().decode()

    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert {"conveyor_tasks_enqueued", "conveyor_tasks_completed", "conveyor_workers_connected",
            "conveyor_task_run_seconds", "conveyor_queue_depth"} <= set(families)
    for name, family in families.items():
        assert name.startswith("conveyor_"), name
        assert family.documentation, f"{name} has no help text"
        assert not name.endswith("_total"), f"{name}: the parser strips _total from counters only"
        if family.type == "counter":
            values = [s for s in family.samples if not s.name.endswith("_created")]
            assert all(s.name == name + "_total" for s in values), name
        elif family.type == "histogram":
            assert name.endswith("_seconds"), f"{name}: a histogram of time is named in seconds"
            parts = {name + "_bucket", name + "_count", name + "_sum", name + "_created"}
            assert {s.name for s in family.samples} <= parts, name
        else:
            assert family.type == "gauge", (name, family.type)
        for sample in family.samples:
            assert "task_id" not in sample.labels, "labels stay low-cardinality"
    assert "conveyor_tasks_enqueued_total{" in text
    assert read_metrics(broker.metrics_url)[f'conveyor_tasks_enqueued_total{{queue="{queue_name}"}}'] == 1

"""Task lifecycle against real workers: exact counters, label sets and histogram counts."""

from __future__ import annotations

import celery
import pytest

from tests.integration.harness import (
    HOSTNAME,
    Broker,
    Exporter,
    MultiTap,
    Procs,
    RedisEventTap,
    Worker,
    producer,
)
from tests.integration.workload import (
    expected_numbers,
    finished,
    mismatches,
    run_lifecycle,
    task_numbers,
)

pytestmark = pytest.mark.slow


def test_lifecycle_exact_numbers(broker: Broker, procs: Procs) -> None:
    exporter = Exporter(procs, broker)
    # prefork has an event loop, so task events arrive batched as task.multi.
    node = Worker(procs, broker, "life", queues=["idle"], concurrency=2).node
    exporter.wait_up(node)
    tap = MultiTap(broker)
    procs.on_teardown(tap.close)
    with producer(broker) as p:
        expected = run_lifecycle([exporter], node, p)
    want = expected_numbers(expected, node)
    probe = "redis_queues" if broker.is_redis else "amqp_queues"

    def settled(m) -> bool:
        return (finished(m) >= expected.finished
                and m.value("celery_exporter_tasks_tracked", -1) == 0
                and m.get("celery_worker_tasks_prefetched", worker=node) == 0
                and m.get("celery_worker_tasks_scheduled", worker=node) == 0
                and m.get("celery_worker_tasks_active", worker=node) == 0
                and m.get("celery_worker_pool_processes", worker=node) == 2
                # -c 2 x multiplier 1, once the worker has given back its ETA slots
                and m.get("celery_worker_prefetch_limit", worker=node) == 2
                and m.get("celery_exporter_probe_success", probe="inspect") == 1
                and m.get("celery_exporter_probe_success", probe=probe) == 1
                and all(m.get("celery_queue_consumers", queue=q) == 1
                        for q in ("default", "other", "prio")))

    exporter.wait(settled, "every task finished, buffers empty, probes answered")
    m = exporter.wait(lambda m: not mismatches(task_numbers(m), want),
                      f"exact task numbers {want}", timeout=10)
    assert tap.count() > 0, "no task.multi batch seen: the batch path went untested"

    # Worker identity and liveness.
    assert m.table("celery_worker_up", "worker") == {(node,): 1.0}, \
        "producer-side task-sent hostnames (gen<pid>@host) must not become workers"
    info = m.series("celery_worker_info")
    assert [s.labels for s in info] == [{
        "worker": node, "version": celery.__version__,
        "implementation": "py-celery", "system": "Linux"}]

    # Queues: drained and consumed.
    for q in ("default", "other", "prio"):
        assert m.get("celery_queue_length", queue=q) == 0, q

    # Exporter self-metrics: every event accepted, nothing left in flight.
    assert m.total("celery_exporter_events_invalid_total") == 0, \
        m.series("celery_exporter_events_invalid_total")
    assert m.value("celery_exporter_tasks_tracked") == 0
    assert m.total("celery_exporter_tasks_evicted_total") == 0
    # Prefetch wait is measured on the worker's clock alone: it can never come out negative.
    assert m.get("celery_exporter_waits_clamped_total",
                 metric="celery_task_prefetch_wait_seconds") == 0
    assert m.get("celery_exporter_events_total", type="task-sent") == sum(
        expected.sent.values())
    assert m.get("celery_exporter_events_total", type="task-received") == sum(
        expected.received.values())
    assert m.get("celery_exporter_events_total", type="task-revoked") == 1
    assert m.value("celery_exporter_broker_connected") == 1
    assert m.value("celery_exporter_task_events_missing") == 0
    assert m.get("celery_worker_task_events_missing", worker=node) == 0
    code, text = exporter.get("/readyz")
    assert code == 200, text


@pytest.mark.redis
def test_late_task_sent_is_counted_but_not_tracked(redis_broker: Broker, procs: Procs) -> None:
    """A producer publishes task-sent after the task message, so on a busy producer the
    worker's whole lifecycle can reach the exporter first. The late task-sent must still
    count, and must not leave a task in the in-flight table until the TTL evicts it."""
    exporter = Exporter(procs, redis_broker)
    node = Worker(procs, redis_broker, "late", concurrency=1).node
    exporter.wait_up(node)
    with producer(redis_broker) as p:
        p.app.conf.task_send_sent_event = False
        ids = [p.send("tests.add", 1, 2), p.send("tests.fail", "value", queue="other")]
        exporter.wait(lambda m: finished(m) == 2, "both tasks finished")
        send_sent_event(p, ids[0], "tests.add", "default")
        send_sent_event(p, ids[1], "tests.fail", "other")
    m = exporter.wait(lambda m: m.total("celery_task_sent_total") == 2, "the late task-sent")
    assert m.get("celery_task_sent_total", name="tests.add", queue="default") == 1
    assert m.get("celery_task_sent_total", name="tests.fail", queue="other") == 1
    assert m.value("celery_exporter_tasks_tracked") == 0, \
        "a task-sent for a finished task re-entered the in-flight table"


def send_sent_event(p, task_id: str, name: str, queue: str) -> None:
    """The task-sent a producer would have published, published late, by hand."""
    with p.app.events.default_dispatcher(hostname=f"gen1@{HOSTNAME}") as dispatcher:
        dispatcher.send("task-sent", uuid=task_id, name=name, args="()", kwargs="{}",
                        retries=0, eta=None, expires=None, queue=queue, exchange="",
                        routing_key=queue, root_id=task_id, parent_id=None)


@pytest.mark.redis
def test_worker_side_labels_survive_late_task_sent(redis_broker: Broker,
                                                   procs: Procs) -> None:
    exporter = Exporter(procs, redis_broker)
    node = Worker(procs, redis_broker, "race", concurrency=1).node
    exporter.wait_up(node)
    tap = RedisEventTap(redis_broker)
    procs.on_teardown(tap.close)
    with producer(redis_broker) as p:
        p.app.conf.task_send_sent_event = False
        task_id = p.send("tests.sleep", 1.0)
        tap.wait_for("task-started", task_id)  # the worker is ahead of the producer
        send_sent_event(p, task_id, "tests.sleep", "default")
    m = exporter.wait(lambda m: m.total("celery_task_succeeded_total") == 1, "task done")
    labels = {(s.name, s.labels["queue"]) for s in m.samples
              if s.name.startswith("celery_task_") and "queue" in s.labels}
    assert not [x for x in labels if x[1] != "default"], sorted(labels)
    assert m.get("celery_task_queue_wait_seconds_count", name="tests.sleep",
                 queue="default") == 1

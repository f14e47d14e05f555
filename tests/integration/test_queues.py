"""Queue probes against a real broker: backlog lengths, priority sub-lists, consumers."""

from __future__ import annotations

import pytest

from tests.integration.harness import Broker, Exporter, Procs, Worker, producer, redis_queue_keys

pytestmark = pytest.mark.slow

DEFAULT_BACKLOG = 5
PRIORITIES = (0, 3, 6, 9, 9, 1)  # every step, two lists holding two each


def test_queue_length_and_consumers(broker: Broker, procs: Procs) -> None:
    exporter = Exporter(procs, broker, "--queue", "never-used")
    # A worker that consumes only `other`: heartbeats and inspect, nothing drains the rest.
    node = Worker(procs, broker, "qlen", queues=["other"], concurrency=1).node
    exporter.wait_up(node)
    with producer(broker) as p:
        for i in range(DEFAULT_BACKLOG):
            p.send("tests.add", i, i)
        for prio in PRIORITIES:
            p.send("tests.add", prio, 0, queue="prio", priority=prio)

    if broker.is_redis:
        # kombu spreads a priority queue over one list per step: prove they are all used.
        client = broker.redis()
        lists = {key: client.llen(key) for key in redis_queue_keys("prio")}
        client.close()
        assert sorted(lists.values()) == [1, 1, 2, 2], lists
    else:
        # RabbitMQ: the broker's own count of ready messages and consumers.
        broker_view = {q: broker.amqp_queue(q) for q in ("default", "prio", "other")}
        assert broker_view == {"default": (DEFAULT_BACKLOG, 0), "prio": (len(PRIORITIES), 0),
                               "other": (0, 1)}, broker_view
    # RabbitMQ counts consumers itself; on Redis they are the live workers consuming it.
    consumers = {"other": 1.0, "default": 0.0, "prio": 0.0, "never-used": 0.0}

    want = {("default",): float(DEFAULT_BACKLOG), ("prio",): float(len(PRIORITIES)),
            ("other",): 0.0, ("never-used",): 0.0}
    m = exporter.wait(
        lambda m: (m.table("celery_queue_length", "queue") == want
                   and all(m.get("celery_queue_consumers", queue=q) == n
                           for q, n in consumers.items())),
        f"celery_queue_length {want} and consumers {consumers}")
    probe = "redis_queues" if broker.is_redis else "amqp_queues"
    assert m.get("celery_exporter_probe_success", probe=probe) == 1
    assert m.get("celery_exporter_probe_errors_total", probe=probe) == 0
    # Queued tasks were sent, never received.
    assert m.table("celery_task_sent_total", "name", "queue") == {
        ("tests.add", "default"): DEFAULT_BACKLOG, ("tests.add", "prio"): len(PRIORITIES)}
    assert m.series("celery_task_received_total") == []
    assert m.value("celery_exporter_tasks_tracked") == DEFAULT_BACKLOG + len(PRIORITIES)

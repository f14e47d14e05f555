"""Redis specifics: both consumer paths on one stream, and kombu transport options."""

from __future__ import annotations

import pytest

from tests.integration.conftest import make_broker
from tests.integration.harness import (
    Broker,
    Exporter,
    Metrics,
    Procs,
    Worker,
    producer,
    redis_queue_keys,
)
from tests.integration.workload import (
    expected_numbers,
    finished,
    mismatches,
    run_lifecycle,
    task_numbers,
)

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def event_counts(m: Metrics) -> dict[tuple[str, ...], float]:
    return {k: v for k, v in m.table("celery_exporter_events_total", "type").items()
            if k[0].startswith("task-")}


def test_fast_path_and_kombu_path_agree(redis_broker: Broker, procs: Procs) -> None:
    fast = Exporter(procs, redis_broker, "--ingest", "redis", name="exporter-fast")
    slow = Exporter(procs, redis_broker, "--ingest", "kombu", name="exporter-kombu")
    assert "(redis ingest)" in fast.proc.log.read_text()
    assert "(kombu ingest)" in slow.proc.log.read_text()
    node = Worker(procs, redis_broker, "paths", queues=["idle"], concurrency=2).node
    for e in (fast, slow):
        e.wait_up(node)
    with producer(redis_broker) as p:
        expected = run_lifecycle([fast, slow], node, p)
    want = expected_numbers(expected, node)
    seen = {}
    for e in (fast, slow):
        m = e.wait(lambda m: (finished(m) >= expected.finished
                              and m.value("celery_exporter_tasks_tracked", default=-1) == 0
                              and not mismatches(task_numbers(m), want)),
                   f"exact task numbers {want}")
        assert m.total("celery_exporter_events_invalid_total") == 0
        seen[e.proc.name] = (task_numbers(m), event_counts(m))
    assert seen["exporter-fast"] == seen["exporter-kombu"]


@pytest.mark.parametrize("options", [
    pytest.param({"global_keyprefix": "pfx:"}, id="global_keyprefix"),
    pytest.param({"global_keyprefix": "pfx:", "fanout_prefix": False},
                 id="global_keyprefix+no_fanout_prefix"),
])
def test_transport_options(options: dict, procs: Procs, request: pytest.FixtureRequest) -> None:
    broker = make_broker(request, "redis", **options)
    exporters = [Exporter(procs, broker, "--ingest", "redis", name="exporter-fast"),
                 Exporter(procs, broker, "--ingest", "kombu", name="exporter-kombu")]
    node = Worker(procs, broker, "pfx", queues=["default"], concurrency=1).node
    for e in exporters:
        e.wait_up(node)
    with producer(broker) as p:
        for i in range(3):
            p.send("tests.add", i, i)
        for i in range(3):
            p.send("tests.add", i, i, queue="other")  # nobody consumes `other`
        for prio in (0, 9):
            p.send("tests.add", prio, prio, queue="prio", priority=prio)

    client = broker.redis()
    try:
        assert client.llen("pfx:other") == 3
        assert client.exists("other") == 0, "the producer ignored global_keyprefix"
        assert [client.llen(k) for k in redis_queue_keys("prio", "pfx:")] == [1, 0, 0, 1]
    finally:
        client.close()

    want_lengths = {("default",): 0.0, ("other",): 3.0, ("prio",): 2.0}
    for e in exporters:
        m = e.wait(
            lambda m: (m.total("celery_task_succeeded_total", name="tests.add",
                               worker=node) == 3
                       and m.table("celery_queue_length", "queue") == want_lengths
                       and m.get("celery_worker_pool_processes", worker=node) == 1),
            f"events through the prefixed channel, queue lengths {want_lengths} from the "
            "prefixed keys, inspect answered")
        assert m.total("celery_task_sent_total") == 8
        assert m.total("celery_exporter_events_invalid_total") == 0

"""The prefetch backlog: tasks held in a worker's buffer, and ETA tasks held apart."""

from __future__ import annotations

import pytest

from tests.integration.harness import Broker, Exporter, Metrics, Procs, Worker, producer

pytestmark = pytest.mark.slow

SLEEPS = 6
SLEEP_SECONDS = 0.5
# Far enough ahead that the burst (SLEEPS x SLEEP_SECONDS on one slot) drains long before
# the ETA on a loaded machine, so "only the ETA task is held" is always checked.
ETA_AHEAD = 30.0


def test_prefetched_and_scheduled(broker: Broker, procs: Procs) -> None:
    # A long worker timeout: heartbeat jitter under load must not flap the worker down,
    # which would (rightly) empty its buffer counts in the middle of the test.
    exporter = Exporter(procs, broker, "--worker-timeout", "30")
    # One pool process, prefetch 4: the rest of the burst waits in the worker's buffer.
    node = Worker(procs, broker, "pf", concurrency=1, prefetch=4).node
    exporter.wait_up(node)

    def gauge(m: Metrics, metric: str) -> float | None:
        return m.get(f"celery_worker_tasks_{metric}", worker=node)

    with producer(broker) as p:
        eta_id = p.send("tests.add", 1, 1, countdown=ETA_AHEAD)
        exporter.wait(lambda m: gauge(m, "scheduled") == 1, "the ETA task held as scheduled")
        for _ in range(SLEEPS):
            p.send("tests.sleep", SLEEP_SECONDS)

        backlog = exporter.wait(lambda m: (gauge(m, "prefetched") or 0) >= 2,
                                "a prefetch backlog of at least 2")
        assert gauge(backlog, "scheduled") == 1, "the ETA task is held, not prefetched"
        assert (gauge(backlog, "prefetched") or 0) <= 4 + 1, "more than the prefetch limit"

        drained = exporter.wait(
            lambda m: (m.total("celery_task_succeeded_total", name="tests.sleep",
                               worker=node) == SLEEPS
                       and gauge(m, "prefetched") == 0),
            "the burst drained")
        assert gauge(drained, "scheduled") == 1, \
            "with the buffer drained, only the ETA task is held (as scheduled)"
        assert drained.series("celery_task_started_total", name="tests.add") == [], \
            "the ETA task has not started: it is still held"
        p.revoke(eta_id)

    # Celery announces task-revoked for a held ETA task when its ETA comes.
    m = exporter.wait(
        lambda m: (gauge(m, "scheduled") == 0
                   and m.total("celery_task_revoked_total", name="tests.add", worker=node,
                               reason="revoked") == 1),
        "the revoked ETA task released", timeout=ETA_AHEAD + 45)
    assert gauge(m, "prefetched") == 0
    assert m.value("celery_exporter_tasks_tracked") == 0
    # Every burst task waited in the buffer except the first: the histogram shows it.
    assert m.total("celery_task_prefetch_wait_seconds_count", name="tests.sleep") == SLEEPS, \
        m.dump()
    waited = m.total("celery_task_prefetch_wait_seconds_sum", name="tests.sleep")
    assert waited >= SLEEP_SECONDS * 2, f"prefetch wait sum {waited}s for a queued burst"
    assert m.series("celery_task_started_total", name="tests.add") == [], \
        "the revoked ETA task never started"

"""Worker liveness: killed without worker-offline, shut down cleanly, restarted."""

from __future__ import annotations

import pytest

from tests.integration.harness import Broker, Exporter, Metrics, Procs, Worker, producer

pytestmark = pytest.mark.slow


def worker_series(m: Metrics, node: str) -> list[str]:
    """Names of every series that still carries this worker's label."""
    return sorted({s.name for s in m.samples if s.labels.get("worker") == node})


def test_killed_worker_goes_down_then_away(broker: Broker, procs: Procs) -> None:
    quick = Exporter(procs, broker, "--worker-timeout", "3", "--worker-down-retention", "5",
                     name="exporter-quick")
    default = Exporter(procs, broker, name="exporter-default")  # Celery's rule: 2 x freq
    worker = Worker(procs, broker, "doomed", concurrency=1, prefetch=4)
    node = worker.node
    for e in (quick, default):
        e.wait_up(node)
    with producer(broker) as p:
        p.send("tests.add", 1, 1)
        quick.wait(lambda m: m.total("celery_task_succeeded_total", worker=node) == 1,
                   "one task done: task series carry the worker label")
        for _ in range(4):
            p.send("tests.sleep", 3)
        # Watched on the default-rule exporter: with a 3 s timeout, heartbeat jitter under
        # load can flap the worker down, which (rightly) empties its buffer count.
        default.wait(lambda m: (m.get("celery_worker_tasks_prefetched", worker=node) or 0) >= 1,
                     "tasks waiting in the worker's buffer")

    worker.kill()  # SIGKILL to the whole pool: no worker-offline, no more heartbeats
    for e in (quick, default):
        m = e.wait(lambda m: m.get("celery_worker_up", worker=node) == 0,
                   "celery_worker_up 0 after the heartbeat timeout")
        assert m.get("celery_worker_tasks_prefetched", worker=node) == 0, \
            "a dead worker's buffer went back to the broker: prefetched must drop to 0"
        assert m.get("celery_worker_tasks_active", worker=node) == 0
        assert m.get("celery_worker_clean_shutdown", worker=node) == 0, "a crash, not a goodbye"

    # --worker-down-retention 5: the down worker's series go away, task series included.
    m = quick.wait(lambda m: worker_series(m, node) == [],
                   "every series of the dead worker removed after the retention")
    assert m.series("celery_worker_up") == []
    # Default retention (600 s): the 0 stays for the "worker down" alert to fire on.
    m = default.scrape()
    assert m.get("celery_worker_up", worker=node) == 0
    assert m.total("celery_task_succeeded_total", name="tests.add", worker=node) == 1


def test_clean_shutdown_and_restart(broker: Broker, procs: Procs) -> None:
    # A long timeout: only worker-offline can take the worker down within the test.
    exporter = Exporter(procs, broker, "--worker-timeout", "120")
    worker = Worker(procs, broker, "phoenix", concurrency=1, prefetch=4)
    node = worker.node
    exporter.wait_up(node)
    tasks = 4
    with producer(broker) as p:
        for _ in range(tasks):
            p.send("tests.sleep", 1)
    exporter.wait(lambda m: (m.get("celery_worker_tasks_prefetched", worker=node) or 0) >= 1,
                  "tasks waiting in the worker's buffer")

    worker.terminate()  # warm shutdown: finishes the running task, requeues the buffer
    m = exporter.wait(lambda m: m.get("celery_worker_up", worker=node) == 0,
                      "celery_worker_up 0 from worker-offline")
    assert m.get("celery_worker_tasks_prefetched", worker=node) == 0
    assert m.get("celery_worker_clean_shutdown", worker=node) == 1
    assert m.value("celery_exporter_events_total", type="worker-offline") == 1
    worker.proc.wait_exit(30)

    worker = Worker(procs, broker, "phoenix", concurrency=1, prefetch=4)
    exporter.wait_up(node)
    m = exporter.wait(
        lambda m: (m.total("celery_task_succeeded_total", name="tests.sleep",
                           worker=node) == tasks
                   and m.get("celery_worker_tasks_prefetched", worker=node) == 0
                   and m.value("celery_exporter_tasks_tracked", default=-1) == 0),
        f"all {tasks} tasks done once, by the restarted worker too, buffer empty")
    assert m.get("celery_worker_up", worker=node) == 1
    assert m.get("celery_worker_clean_shutdown", worker=node) == 0
    assert m.get("celery_worker_tasks_scheduled", worker=node) == 0
    assert m.table("celery_worker_up", "worker") == {(node,): 1.0}
    assert m.value("celery_exporter_events_total", type="worker-online") == 2

"""Worker faults with real workers: SIGKILL mid-task with a full prefetch buffer, restart
under the same name, and a whole fleet scaled to zero and back.

What is checked is the part the worker lifecycle tests (tests/integration) do not cover:
the prefetched/active gauges around a crash, that no gauge goes negative, and that worker
series are removed after the retention and come back without duplicates, so nothing grows.
"""

from __future__ import annotations

import shutil
import signal

import pytest
import redis

from tests.support.procs import (
    Producer,
    Samples,
    WorkerProc,
    exporter,
    monotonic_violations,
    one,
    pick,
    wait_until,
)
from tests.support.servers import RedisServer, free_port

RETENTION = 8  # --worker-down-retention: short, so removal is observable


def _worker_series(samples: Samples) -> dict[str, int]:
    """How many series carry each worker label value."""
    out: dict[str, int] = {}
    for name, labels in samples:
        worker = dict(labels).get("worker")
        if worker is not None and name.startswith("celery_"):
            out[worker] = out.get(worker, 0) + 1
    return out


def _no_negative_gauges(history: list[Samples]) -> None:
    for samples in history:
        for (name, labels), value in samples.items():
            if name.startswith("celery_worker_tasks_"):
                assert value >= 0, (name, dict(labels), value)


@pytest.fixture
def private_redis():
    server = RedisServer(free_port()).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


@pytest.mark.redis
@pytest.mark.slow
def test_sigkill_mid_task_then_restart_same_name(private_redis: RedisServer) -> None:
    url = private_redis.url
    name = "rel-kill@127.0.0.1"
    # threads pool, 2 slots, prefetch multiplier 2: 4 unacked messages in the buffer; a task
    # is acked when it starts (acks_late off), so 2 run and 4 more wait: 6 of the 6 taken.
    worker = WorkerProc(url, name, concurrency=2, prefetch=2)
    history: list[Samples] = []

    def scrape() -> Samples:
        history.append(exp.samples())
        return history[-1]

    def gauge(metric: str) -> float:
        return one(scrape(), f"celery_worker_tasks_{metric}", worker=name)

    try:
        with exporter(url, "--worker-down-retention", str(RETENTION), "--probe-interval", "0",
                      "--no-inspect") as exp:
            worker.start()
            wait_until(lambda: one(scrape(), "celery_worker_up", worker=name) == 1, 60,
                       what="worker up")
            producer = Producer(url)
            producer.send(6, "tests.sleep", (120,))
            wait_until(lambda: pick(scrape(), "celery_task_started_total") == 2
                       and gauge("prefetched") == 4, 30, what="2 running + 4 prefetched")
            # `active` comes from heartbeats (every 2 s).
            wait_until(lambda: gauge("active") == 2, 15, what="active 2 from a heartbeat")
            tracked = pick(history[-1], "celery_exporter_tasks_tracked")
            assert tracked == 6  # 2 running, 4 prefetched

            worker.kill(signal.SIGKILL)
            # No worker-offline: down after the heartbeat timeout (2 x 2 s).
            wait_until(lambda: one(scrape(), "celery_worker_up", worker=name) == 0, 30,
                       what="worker up 0 after SIGKILL")
            down = history[-1]
            for metric in ("active", "prefetched", "scheduled"):
                assert one(down, f"celery_worker_tasks_{metric}", worker=name) == 0, metric

            # The crash left 4 unacked sleeps; Redis redelivers them only after the visibility
            # timeout (1 h), but drop them so a restarted worker could never spend minutes.
            client = redis.Redis(host="127.0.0.1", port=private_redis.port)
            client.delete("default", "unacked", "unacked_index")
            client.close()
            worker.start()
            wait_until(lambda: one(scrape(), "celery_worker_up", worker=name) == 1, 60,
                       what="worker up again under the same name")
            producer.send(8)
            wait_until(lambda: pick(scrape(), "celery_task_succeeded_total") == 8, 60,
                       what="8 tasks after the restart")
            wait_until(lambda: gauge("active") == 0 and gauge("prefetched") == 0, 15,
                       what="gauges back to 0")
            producer.close()
            final = scrape()
            # One node, one series per gauge: the restart did not duplicate anything.
            assert sum(1 for n, lab in final if n == "celery_worker_up") == 1
            assert one(final, "celery_worker_up", worker=name) == 1
            # The 6 tasks the crash took away stay tracked (no terminal event) until the TTL.
            assert pick(final, "celery_exporter_tasks_tracked") == 6
            _no_negative_gauges(history)
            assert monotonic_violations(history) == []
            print(f"\nSIGKILL mid-task: active 2 / prefetched 4 -> up 0 with active 0, "
                  f"prefetched 0; restart under the same name: up 1, 8/8 new tasks counted, "
                  f"gauges back to 0, {len(history)} scrapes, none negative")
    finally:
        worker.kill()


@pytest.mark.redis
@pytest.mark.slow
def test_scale_to_zero_and_back(private_redis: RedisServer) -> None:
    url = private_redis.url
    names = ["rel-a@127.0.0.1", "rel-b@127.0.0.1"]
    workers = [WorkerProc(url, n) for n in names]
    history: list[Samples] = []

    def scrape() -> Samples:
        history.append(exp.samples())
        return history[-1]

    def up() -> dict[str, float]:
        s = scrape()
        return {n: one(s, "celery_worker_up", worker=n) for n in names}

    try:
        with exporter(url, "--worker-down-retention", str(RETENTION), "--probe-interval", "0",
                      "--no-inspect") as exp:
            for w in workers:
                w.start()
            wait_until(lambda: set(up().values()) == {1.0}, 60, what="both workers up")
            producer = Producer(url)
            producer.send(20)
            wait_until(lambda: pick(scrape(), "celery_task_succeeded_total") == 20, 60,
                       what="20 tasks")
            first = scrape()
            first_series = _worker_series(first)

            for w in workers:  # clean shutdown: worker-offline, up 0 at once
                w.stop()
            wait_until(lambda: set(up().values()) == {0.0}, 15, what="both workers up 0")
            zero = history[-1]
            for n in names:
                for metric in ("active", "prefetched", "scheduled"):
                    assert one(zero, f"celery_worker_tasks_{metric}", worker=n) == 0
            # After the retention every series naming the workers is gone.
            wait_until(lambda: _worker_series(scrape()) == {}, RETENTION + 20,
                       what="worker series removed after the retention")

            for w in workers:
                w.start()
            wait_until(lambda: set(up().values()) == {1.0}, 60, what="both workers back")
            producer.send(20)
            wait_until(lambda: sum(pick(scrape(), "celery_task_succeeded_total", worker=n)
                                   for n in names) == 20, 60, what="20 tasks after the return")
            producer.close()
            again = _worker_series(scrape())
            assert again == first_series, (first_series, again)
            _no_negative_gauges(history)
            assert monotonic_violations(history) == []
            print(f"\nscale 2 -> 0 -> 2: worker series {sum(first_series.values())} -> 0 "
                  f"(after {RETENTION}s retention) -> {sum(again.values())}; 20 + 20 tasks "
                  f"counted")
    finally:
        for w in workers:
            w.kill()

"""Soak: a steady task rate for CEE_SOAK_SECONDS (default 60) with worker churn and 1% of
terminal events dropped on purpose; the exporter's RSS and series count must stay flat.

Real processes on a private Redis: one steady worker, one churning worker replaced under a
new name every CHURN_SECONDS (alternately SIGKILL and clean stop), both dropping 1% of their
task-succeeded/task-failed events (CEE_DROP_TERMINAL_PCT in tests/support/celeryapp.py). The
exporter runs with a short task TTL and worker retention so the soak covers several
generations of both. Every SAMPLE_SECONDS the test records RSS, series, tracked tasks and
worker series; after a warm-up (one TTL plus one retention) they must not grow.

Longer run for the documentation: CEE_SOAK_SECONDS=600 pytest tests/reliability/test_soak.py -s
"""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

from tests.support.procs import (
    Producer,
    Samples,
    WorkerProc,
    exporter,
    monotonic_violations,
    pick,
    series_count,
    wait_until,
)
from tests.support.servers import RedisServer, free_port

SOAK_SECONDS = float(os.environ.get("CEE_SOAK_SECONDS", "60"))
RATE = float(os.environ.get("CEE_SOAK_RATE", "30"))  # tasks per second
CHURN_SECONDS = 15.0
SAMPLE_SECONDS = 5.0
TASK_TTL = 20.0
RETENTION = 10.0
WARMUP = TASK_TTL + RETENTION
RSS_SLACK_MIB = 8.0  # allocator warm-up and noise; a leak of ~2 KB per event grows past it


def _worker_labels(samples: Samples) -> set[str]:
    return {dict(labels)["worker"] for name, labels in samples
            if name == "celery_worker_up"}


def _split_series(samples: Samples) -> tuple[int, int]:
    """(samples naming a worker, the others) among the celery_ samples."""
    per_worker = sum(1 for name, labels in samples
                     if name.startswith("celery_") and "worker" in dict(labels))
    return per_worker, series_count(samples) - per_worker


def _row(r: dict[str, float]) -> str:
    return (f"  t={r['t']:5.0f}s rss={r['rss']:6.1f} MiB series={r['series']:5.0f} "
            f"(per-worker {r['worker_series']:4.0f}, other {r['other_series']:4.0f}) "
            f"tracked={r['tracked']:4.0f} workers={r['workers']:2.0f} "
            f"evicted={r['evicted']:5.0f}")


def _finished(samples: Samples) -> float:
    return (pick(samples, "celery_task_succeeded_total")
            + pick(samples, "celery_task_failed_total"))


def _ever(history: list[Samples], prefix: str) -> float:
    """Sum over every series ever scraped of its last value: churned workers' series are
    removed after the retention, and their counts with them."""
    last: dict = {}
    for samples in history:
        for key, value in samples.items():
            if key[0].startswith(prefix):
                last[key] = value
    return sum(last.values())


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 240)
def test_soak_rss_and_series_stay_flat() -> None:
    assert SOAK_SECONDS >= WARMUP + 2 * SAMPLE_SECONDS, "CEE_SOAK_SECONDS too short"
    server = RedisServer(free_port()).start()
    drop = {"CEE_DROP_TERMINAL_PCT": "1"}
    steady = WorkerProc(server.url, "soak-steady@127.0.0.1", concurrency=4, env=drop)
    churn: WorkerProc | None = None
    generation = 0
    rows: list[dict[str, float]] = []
    history: list[Samples] = []
    try:
        with exporter(server.url, "--task-ttl", str(TASK_TTL), "--worker-down-retention",
                      str(RETENTION), "--probe-interval", "5", "--inspect-interval", "10",
                      "--probe-timeout", "2") as exp:
            steady.start()
            wait_until(lambda: exp.value("celery_worker_up", worker=steady.name) == 1, 60,
                       what="steady worker up")
            producer = Producer(server.url)
            started = time.monotonic()
            next_churn = next_sample = sent = 0.0
            tick = 0.25
            for k in range(int(SOAK_SECONDS / tick) + 1):
                elapsed = time.monotonic() - started
                if elapsed >= SOAK_SECONDS:
                    break
                if elapsed >= next_churn:
                    if churn is not None:
                        # Clean stop first (worker-offline is seen in the warm-up), then
                        # alternate with SIGKILL.
                        churn.kill(signal.SIGTERM if generation % 2 else signal.SIGKILL)
                    generation += 1
                    churn = WorkerProc(server.url, f"soak-churn-{generation}@127.0.0.1",
                                       env=drop).start()
                    next_churn += CHURN_SECONDS
                if elapsed >= next_sample:
                    samples = exp.samples()
                    history.append(samples)
                    worker_series, other_series = _split_series(samples)
                    rows.append({
                        "t": elapsed, "rss": pick(samples, "process_resident_memory_bytes")
                        / 2**20, "series": series_count(samples),
                        "worker_series": worker_series, "other_series": other_series,
                        "tracked": pick(samples, "celery_exporter_tasks_tracked"),
                        "workers": len(_worker_labels(samples)),
                        "events": pick(samples, "celery_exporter_events_total"),
                        "evicted": pick(samples, "celery_exporter_tasks_evicted_total"),
                    })
                    print(_row(rows[-1]), flush=True)
                    next_sample += SAMPLE_SECONDS
                due = int(RATE * (elapsed + tick) - sent)
                if due > 0:
                    # One failing task every 10 ticks, from the first: every label set
                    # (name, queue, exception) exists before the warm-up ends.
                    n_fail = 1 if k % 10 == 0 else 0
                    producer.send(due - n_fail)
                    if n_fail:
                        producer.send(n_fail, "tests.fail", ("value",))
                    sent += due
                time.sleep(max(0.0, started + elapsed + tick - time.monotonic()))
            producer.close()
            # Drain: wait until the finished count stops moving (bounded).
            last, still = -1.0, 0
            for _ in range(60):
                history.append(exp.samples())
                now = _finished(history[-1])
                still = still + 1 if now == last else 0
                if still >= 3:
                    break
                last = now
                time.sleep(1)
            final = history[-1]
            log = exp.log()
    finally:
        if churn is not None:
            churn.kill()
        steady.kill()
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)

    warm = [r for r in rows if r["t"] < WARMUP]
    flat = [r for r in rows if r["t"] >= WARMUP]
    base = warm[-1]
    rss_growth = max(r["rss"] for r in flat) - base["rss"]
    sent_total = pick(final, "celery_task_sent_total")
    finished = (_ever(history, "celery_task_succeeded_total")
                + _ever(history, "celery_task_failed_total"))
    counts = {e: _ever(history, f"celery_task_{e}_total")
              for e in ("sent", "received", "started", "succeeded", "failed")}
    print(f"\nsoak {SOAK_SECONDS:.0f}s at {RATE:.0f} tasks/s, {generation} churn workers, 1% "
          f"terminal events dropped: {counts}, "
          f"{pick(final, 'celery_exporter_events_total'):.0f} events, queue length "
          f"{pick(final, 'celery_queue_length', queue='default'):.0f}, reconnects "
          f"{pick(final, 'celery_exporter_broker_reconnects_total'):.0f}")
    new = {(n, tuple(sorted(lab))) for n, lab in final
           if n.startswith("celery_") and "worker" not in dict(lab)} - {
        (n, tuple(sorted(lab))) for n, lab in history[len(warm) - 1]}
    print(f"  series (not naming a worker) new after warm-up: {sorted(new)}")
    print(f"  after warm-up: RSS {base['rss']:.1f} -> max {max(r['rss'] for r in flat):.1f} "
          f"MiB (+{rss_growth:.1f}; last {flat[-1]['rss']:.1f}); series max "
          f"{max(r['series'] for r in warm):.0f} in warm-up, "
          f"{min(r['series'] for r in flat):.0f}-{max(r['series'] for r in flat):.0f} after; "
          f"workers max {max(r['workers'] for r in rows):.0f}; tracked max "
          f"{max(r['tracked'] for r in flat):.0f}; evicted by TTL "
          f"{pick(final, 'celery_exporter_tasks_evicted_total', reason='ttl'):.0f}; finished "
          f"{finished:.0f} of {sent_total:.0f} sent ({100 * finished / sent_total:.2f} %)")

    assert "Traceback" not in log
    assert pick(final, "celery_exporter_events_invalid_total") == 0
    assert monotonic_violations(history) == []
    # Memory: flat after warm-up.
    assert rss_growth <= RSS_SLACK_MIB, f"RSS grew {rss_growth:.1f} MiB after warm-up"
    # Series not naming a worker carry only the label values the load uses, so their number
    # is bounded however long the soak runs. (The queue is "unknown" when a task-sent event
    # arrives after the worker's events for the task and inspect has not yet reported the
    # new worker's queues: a label set that may first appear late, once.)
    for name, labels in final:
        if name.startswith("celery_task_"):
            lab = dict(labels)
            assert lab["name"] in ("tests.add", "tests.fail"), (name, lab)
            assert lab.get("queue", "default") in ("default", "unknown"), (name, lab)
            assert lab.get("exception", "ValueError") == "ValueError", (name, lab)
    # Workers listed are those alive or inside timeout + retention (steady, current churn,
    # previous one), and series naming a worker go with it: no scrape has a series naming
    # a worker that celery_worker_up no longer lists.
    bound = 2 + int((RETENTION + 10) / CHURN_SECONDS) + 1
    assert max(r["workers"] for r in rows) <= bound
    for samples in history:
        named = {dict(labels)["worker"] for name, labels in samples
                 if name.startswith("celery_") and "worker" in dict(labels)}
        assert named <= _worker_labels(samples), sorted(named - _worker_labels(samples))
    if generation >= 3:
        # The first churned worker stopped cleanly at CHURN_SECONDS: long gone by the end.
        assert "soak-churn-1@127.0.0.1" not in _worker_labels(final)
    # In-flight table: the dropped 1% and the SIGKILLed tasks are evicted by the TTL.
    if SOAK_SECONDS >= WARMUP + TASK_TTL:
        assert pick(final, "celery_exporter_tasks_evicted_total", reason="ttl") > 0
    # Tracked tasks are those with an event in the last TTL (older ones are evicted), so at
    # most what was sent in one TTL, however slow the machine makes the workers.
    assert max(r["tracked"] for r in flat) <= RATE * (TASK_TTL + 2) + 50
    assert finished >= 0.9 * sent_total

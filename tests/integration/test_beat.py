"""Periodic tasks on real parts: a real `celery beat` publishing a 1.5 s entry to a real
Redis, a real worker running it, and the exporter reading the same schedule from the Celery
app (--beat-schedule): the entry's last run advances with each send and its next run follows;
beat stopped (by pid), the entry turns overdue."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.integration.harness import BIN, Broker, Exporter, Metrics, Procs, Worker

pytestmark = [pytest.mark.slow, pytest.mark.redis]

ENTRY = {"entry": "it-tick", "name": "tests.add"}
EVERY = 1.5


def last(m: Metrics) -> float:
    return m.value("celery_periodic_task_last_run_timestamp_seconds", -1.0, **ENTRY)


def due(m: Metrics) -> float:
    return m.value("celery_periodic_task_next_run_timestamp_seconds", -1.0, **ENTRY)


def test_beat_entry_runs_then_turns_overdue_when_beat_stops(redis_broker: Broker,
                                                            procs: Procs,
                                                            tmp_path: Path) -> None:
    exporter = Exporter(procs, redis_broker, "--beat-schedule", "tests.support.celeryapp:app",
                        "--beat-grace", "2")
    node = Worker(procs, redis_broker, "beatrun", concurrency=1).node
    exporter.wait_up(node)
    beat = procs.spawn("beat", [str(BIN / "celery"), "-A", "tests.support.celeryapp", "beat",
                                "-s", str(tmp_path / "celerybeat-schedule"), "-l", "info"],
                       redis_broker.worker_env(CEE_BEAT_EVERY=str(EVERY)))

    m = exporter.wait(lambda m: last(m) > 0, "a last run for the beat entry")
    assert m.get("celery_periodic_task_overdue", **ENTRY) == 0
    first = last(m)
    m = exporter.wait(lambda m: last(m) > first, "the last run advancing with beat's sends")
    assert due(m) == pytest.approx(last(m) + EVERY, abs=0.01), "next run: last + interval"
    assert m.get("celery_periodic_task_overdue", **ENTRY) == 0
    assert m.get("celery_exporter_probe_success", probe="beat") == 1
    # The sends are beat's, and the worker runs them.
    exporter.wait(lambda m: m.value("celery_task_succeeded_total", name="tests.add",
                                    queue="default", worker=node) >= 2,
                  "the worker ran beat's tasks")

    beat.signal(signal.SIGTERM)
    beat.wait_exit(20)
    m = exporter.wait(lambda m: m.get("celery_periodic_task_overdue", **ENTRY) == 1,
                      "the entry overdue once beat is gone")
    stopped = last(m)
    assert due(m) == pytest.approx(stopped + EVERY, abs=0.01), "the next run stays put"
    assert last(exporter.scrape()) == stopped, "nothing is sent without beat"

"""The exporter's numbers in the reference's terms, and the differences between the two."""

from __future__ import annotations

from collections import Counter

from tests.conformance.reference import Snapshot
from tests.integration.harness import Metrics

# Task event type -> the exporter counter that counts it (by task name, among other labels).
COUNTERS = {
    "task-sent": "celery_task_sent_total",
    "task-received": "celery_task_received_total",
    "task-started": "celery_task_started_total",
    "task-succeeded": "celery_task_succeeded_total",
    "task-failed": "celery_task_failed_total",
    "task-retried": "celery_task_retried_total",
    "task-rejected": "celery_task_rejected_total",
    "task-revoked": "celery_task_revoked_total",
}


def exporter_tasks(m: Metrics) -> Counter:
    """(event type, task name) -> count, summed over every other label."""
    out: Counter = Counter()
    for kind, metric in COUNTERS.items():
        for s in m.series(metric):
            out[(kind, s.labels.get("name", ""))] += int(s.value)
    return +out


def exporter_by_worker(m: Metrics) -> Counter:
    """(event type, task name, worker) -> count, for the counters labelled by worker."""
    out: Counter = Counter()
    for kind, metric in COUNTERS.items():
        for s in m.series(metric):
            if "worker" in s.labels:
                out[(kind, s.labels.get("name", ""), s.labels["worker"])] += int(s.value)
    return +out


def exporter_events(m: Metrics) -> Counter:
    """Event type -> events ingested (celery_exporter_events_total)."""
    return +Counter({s.labels["type"]: int(s.value)
                     for s in m.series("celery_exporter_events_total")})


def exporter_alive(m: Metrics) -> frozenset[str]:
    return frozenset(s.labels["worker"] for s in m.series("celery_worker_up") if s.value == 1)


def diff(got: Counter, want: Counter, what: str) -> list[str]:
    return [f"{what} {key}: exporter {got.get(key, 0)}, reference {want.get(key, 0)}"
            for key in sorted(set(got) | set(want), key=str) if got.get(key, 0) != want.get(key, 0)]


def disagreements(m: Metrics, before: Snapshot, after: Snapshot,
                  event_types: frozenset[str] | None = None) -> list[str]:
    """Where the exporter's scrape `m` is not what the reference saw: per (type, task name),
    then per worker, per event type, and live workers. `before` and `after`
    are reference snapshots taken around the scrape: a count still moving (heartbeats) agrees
    when the exporter's value lies between them; a settled one must be equal.
    `event_types` limits the per-type comparison (None: every type)."""
    out = []
    tasks = exporter_tasks(m)
    for key in sorted(set(tasks) | set(after.tasks), key=str):
        got, lo, hi = tasks.get(key, 0), before.tasks.get(key, 0), after.tasks.get(key, 0)
        if not lo <= got <= hi:
            out.append(f"{key[0]} name={key[1]}: exporter {got}, reference {lo}..{hi}")
    if not out:  # per worker only once the totals agree: one cause, one line
        workers = exporter_by_worker(m)
        for key in sorted(set(workers) | set(after.by_worker), key=str):
            got = workers.get(key, 0)
            lo, hi = before.by_worker.get(key, 0), after.by_worker.get(key, 0)
            if not lo <= got <= hi:
                out.append(f"{key[0]} name={key[1]} worker={key[2]}: exporter {got}, "
                           f"reference {lo}..{hi}")
    events = exporter_events(m)
    for kind in sorted(set(events) | set(after.events)):
        if event_types is not None and kind not in event_types:
            continue
        got, lo, hi = events.get(kind, 0), before.events.get(kind, 0), after.events.get(kind, 0)
        if not lo <= got <= hi:
            out.append(f"events {kind}: exporter {got}, reference {lo}..{hi}")
    alive = exporter_alive(m)
    if alive != after.alive:
        out.append(f"alive workers: exporter {sorted(alive)}, reference {sorted(after.alive)}")
    return out

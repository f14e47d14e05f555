"""Celery / Workers: liveness, load and outcomes per worker."""

from __future__ import annotations

from grafanalib import core as g

from celery_events_exporter import metrics as m

from .common import (
    COUNT,
    RATIO,
    SECONDS,
    TASKS_PER_SECOND,
    Options,
    Q,
    dashboard,
    layout,
    stat,
    steps,
    table,
    timeseries,
    variables,
)

UID = "celery-workers"
FILENAME = "celery-workers.json"


def build(opts: Options) -> g.Dashboard:
    q = Q.for_options(opts)
    cfg = opts.rules
    w = 'worker=~"$worker"'

    def gauge(metric: m.Metric) -> str:
        return q.g(metric, w)

    def per_worker(metric: m.Metric) -> str:
        return q.sum_rate(metric, w, by="worker")

    summary = [
        stat("Workers up", [(q.workers_up(w), "")], unit=COUNT, w=4,
             thresholds=steps(("red", None), ("green", 1)),
             description="Worker nodes whose heartbeats arrive (with grouped worker labels, "
                         "the live nodes of every group)."),
        stat("Workers down",
             [(q.workers_lost(w), "lost"), (q.workers_shut_down(w), "shut down")],
             unit=COUNT, w=4, thresholds=steps(("green", None), ("red", 1)),
             description="Workers down within --worker-down-retention (default 10 minutes), "
                         "after which their series are removed: lost (heartbeats stopped "
                         "without a goodbye: a crash, what CeleryWorkerDown pages on) and "
                         "shut down (announced with worker-offline: a deploy, a scale-in)."),
        stat("Active tasks", [(f"sum({gauge(m.WORKER_TASKS_ACTIVE)})", "")], unit=COUNT, w=4,
             description="Tasks executing now, from the workers' heartbeats."),
        stat("Prefetched tasks", [(f"sum({gauge(m.WORKER_TASKS_PREFETCHED)})", "")],
             unit=COUNT, w=4,
             description="Received, not started, not ETA: the prefetch backlog."),
        stat("Scheduled (ETA) tasks", [(f"sum({gauge(m.WORKER_TASKS_SCHEDULED)})", "")],
             unit=COUNT, w=4, description="ETA/countdown tasks held by workers."),
        stat("Task events missing",
             [(f"sum({gauge(m.WORKER_TASK_EVENTS_MISSING)})", "workers"),
              (f"max({q.m(m.WORKERS_TASK_EVENTS_MISSING)})", "exporter-wide")],
             unit=COUNT, w=4,
             thresholds=steps(("green", None), ("red", 1)),
             description="Workers processing tasks without sending task events, and 1 when "
                         "no task events arrive at all: start workers with -E or set "
                         "worker_send_task_events."),
    ]

    liveness = [
        timeseries("Worker up", [(gauge(m.WORKER_UP), "{{worker}}")], unit=COUNT,
                   min_value=0, step=True,
                   description="1 while heartbeats arrive (with grouped worker labels: the "
                               "number of live nodes in the group); 0 after the heartbeat "
                               "timeout or a clean shutdown (celery_worker_clean_shutdown "
                               "tells which); the series disappears after the down "
                               "retention."),
        timeseries("Heartbeat age",
                   [(f"time() - {gauge(m.WORKER_LAST_HEARTBEAT)}", "{{worker}}")],
                   unit=SECONDS, thresholds=steps(("green", None), ("red", 10)),
                   description="Seconds since the exporter last heard each worker. Workers "
                               "heartbeat every 2 s by default."),
        timeseries("Since last task received",
                   [(f"time() - {gauge(m.WORKER_LAST_RECEIVED)}", "{{worker}}")],
                   unit=SECONDS, w=12,
                   thresholds=steps(("green", None), ("red", cfg.ghost_after_seconds)),
                   description="Seconds since each worker last received a task (before its "
                               "first, since it came online). Growing on a worker that "
                               "heartbeats while its queues have a backlog: a ghost consumer "
                               "(CeleryWorkerGhost, red from its threshold)."),
        table("Queues consumed",
              f"max by (worker, queue) ({gauge(m.WORKER_QUEUE)})",
              description="The queues each worker consumes (inspect active_queues; needs the "
                          "worker inspect probe)."),
    ]

    load = [
        timeseries("Active tasks", [(gauge(m.WORKER_TASKS_ACTIVE), "{{worker}}")], unit=COUNT,
                   w=8, description="Tasks executing per worker."),
        timeseries("Prefetched tasks", [(gauge(m.WORKER_TASKS_PREFETCHED), "{{worker}}")],
                   unit=COUNT, w=8,
                   description="Tasks waiting in each worker's prefetch buffer. A busy worker "
                               "with a long buffer next to an idle one is the prefetch "
                               "backlog problem."),
        timeseries("Scheduled (ETA) tasks", [(gauge(m.WORKER_TASKS_SCHEDULED), "{{worker}}")],
                   unit=COUNT, w=8, description="ETA/countdown tasks held per worker."),
        timeseries("Tasks started by worker", [(per_worker(m.TASK_STARTED), "{{worker}}")],
                   unit=TASKS_PER_SECOND, w=8, stack=True,
                   description="Executions started per second by each worker."),
        timeseries("Pool utilisation (inspect probe)",
                   [(f"{gauge(m.WORKER_TASKS_ACTIVE)} / {gauge(m.WORKER_POOL_PROCESSES)}",
                     "{{worker}}")],
                   unit=RATIO, w=8, min_value=0, max_value=1,
                   description="Active tasks / pool processes. Needs the worker inspect "
                               "probe; empty without it."),
        timeseries("Pool size and prefetch limit (inspect probe)", [
            (gauge(m.WORKER_POOL_PROCESSES), "{{worker}} pool"),
            (gauge(m.WORKER_PREFETCH_LIMIT), "{{worker}} prefetch limit"),
        ], unit=COUNT, w=8,
            description="Concurrency and prefetch count from inspect stats. Needs the "
                        "worker inspect probe; empty without it."),
    ]

    outcomes = [
        timeseries("Failures by worker", [(per_worker(m.TASK_FAILED), "{{worker}}")],
                   unit=TASKS_PER_SECOND,
                   description="Failed executions per second per worker. One worker failing "
                               "alone points at its host, not the code."),
        table("Worker versions", f"max by (worker, version, implementation, system) "
                                 f"({gauge(m.WORKER_INFO)})",
              description="Celery version, Python implementation and OS of each worker."),
    ]

    return dashboard(
        title="Celery / Workers",
        uid=UID,
        description="Worker liveness, heartbeat age, active/prefetched/scheduled tasks, pools.",
        q=q,
        templating=variables(q, worker=True),
        panels=layout([
            ("Summary", summary),
            ("Liveness", liveness),
            ("Load", load),
            ("Outcomes", outcomes),
        ]),
    )

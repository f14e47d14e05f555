"""Celery / Tasks: per task name rates, failures, waits and runtimes."""

from __future__ import annotations

from grafanalib import core as g

from celery_events_exporter import metrics as m

from .common import (
    COUNT,
    QUANTILES,
    RATIO,
    SECONDS,
    TASKS_PER_SECOND,
    Options,
    Q,
    dashboard,
    layout,
    steps,
    timeseries,
    variables,
)

UID = "celery-tasks"
FILENAME = "celery-tasks.json"
# Per-task panels show the busiest or worst tasks only: a fleet has hundreds of task names
# and a legend of hundreds is unreadable (topk per step; pick tasks with $task for more).
TOP = 10


def top(expr: str) -> str:
    return f"topk({TOP}, {expr})"

FINISHED = (m.TASK_SUCCEEDED, m.TASK_FAILED)
_STATES = (
    ("sent", m.TASK_SENT), ("received", m.TASK_RECEIVED), ("started", m.TASK_STARTED),
    ("succeeded", m.TASK_SUCCEEDED), ("failed", m.TASK_FAILED), ("retried", m.TASK_RETRIED),
    ("rejected", m.TASK_REJECTED), ("revoked", m.TASK_REVOKED),
)


def build(opts: Options) -> g.Dashboard:
    q = Q.for_options(opts)
    f = ('queue=~"$queue"', 'name=~"$task"')

    def by_task(metric: m.Metric, by: str = "name") -> str:
        return q.sum_rate(metric, *f, by=by)

    finished = f"sum by (name) ({q.rate(q.any_of(FINISHED, *f))})"
    failed = f"sum by (name) ({q.rate(q.m(m.TASK_FAILED, *f))})"
    cfg = opts.rules

    throughput = [
        timeseries("Task states (selected tasks)",
                   [(q.sum_rate(metric, *f), state) for state, metric in _STATES],
                   unit=TASKS_PER_SECOND,
                   description="Events per second by state for the selected tasks."),
        timeseries("Finished by task", [(top(finished), "{{name}}")], unit=TASKS_PER_SECOND,
                   stack=True,
                   description=f"Executions that ended (succeeded + failed) per second, the "
                               f"{TOP} busiest tasks."),
    ]

    failures = [
        timeseries(
            "Failure ratio by task",
            # `or 0 * finished` gives tasks without any failure a 0 line instead of none.
            [(top(f"({failed} or 0 * {finished}) / {finished}"), "{{name}}")],
            unit=RATIO, min_value=0, max_value=1, w=8,
            thresholds=steps(("green", None), ("red", cfg.task_failure_ratio)),
            description=f"Failed / (succeeded + failed) executions per task, the {TOP} worst. "
                        f"Red from the CeleryTaskFailing threshold."),
        timeseries("Failures by exception",
                   [(top(by_task(m.TASK_FAILED, "name, exception")),
                     "{{name}}: {{exception}}")],
                   unit=TASKS_PER_SECOND, w=8, stack=True,
                   description=f"Failed executions per second by task and exception class, "
                               f"the {TOP} most frequent."),
        timeseries("Retries, rejections, revocations", [
            (top(by_task(m.TASK_RETRIED)), "{{name}} retried"),
            (top(by_task(m.TASK_REJECTED)), "{{name}} rejected"),
            (top(by_task(m.TASK_REVOKED, "name, reason")), "{{name}} revoked ({{reason}})"),
        ], unit=TASKS_PER_SECOND, w=8,
            description="Executions that ended in a retry, messages rejected by workers, "
                        "and revocations by reason (revoked, terminated, expired)."),
    ]

    def p95_by_task(metric: m.Metric) -> list[tuple[str, str]]:
        return [(top(q.quantile(0.95, metric, *f, by=("name",))), "{{name}}")]

    def quantiles(metric: m.Metric) -> list[tuple[str, str]]:
        return [(q.quantile(x, metric, *f), f"p{round(x * 100)}") for x in QUANTILES]

    def mean_by_task(metric: m.Metric) -> str:
        total = f"sum by (name) ({q.rate(q.m(metric, *f, suffix='_sum'))})"
        count = f"sum by (name) ({q.rate(q.m(metric, *f, suffix='_count'))})"
        return f"{total} / {count}"

    latency = [
        timeseries("Queue wait p95 by task", p95_by_task(m.QUEUE_WAIT), unit=SECONDS, w=8,
                   description="Sent (or ETA) → started, 95th percentile per task."),
        timeseries("Prefetch wait p95 by task", p95_by_task(m.PREFETCH_WAIT), unit=SECONDS,
                   w=8, description="Received → started inside a worker's prefetch buffer, "
                                    "95th percentile per task."),
        timeseries("Runtime p95 by task", p95_by_task(m.RUNTIME), unit=SECONDS, w=8,
                   description="Started → finished, 95th percentile per task."),
        timeseries("Queue wait (selected tasks)", quantiles(m.QUEUE_WAIT), unit=SECONDS, w=8,
                   description="Queue wait quantiles over all selected tasks."),
        timeseries("Runtime (selected tasks)", quantiles(m.RUNTIME), unit=SECONDS, w=8,
                   description="Runtime quantiles over all selected tasks."),
        timeseries("Mean runtime by task", [(top(mean_by_task(m.RUNTIME)), "{{name}}")],
                   unit=SECONDS, w=8,
                   description="Average execution time per task; with throughput, this is "
                               "the worker time each task consumes."),
    ]

    interrupted = q.increase(q.m(m.TASK_INTERRUPTED, *f))
    running = [
        timeseries("Running by task",
                   [(top(f"sum by (name, queue) ({q.g(m.TASK_RUNNING, *f)})"),
                     "{{name}} ({{queue}})")],
                   unit=COUNT, w=8, step=True,
                   description=f"Tasks started and not finished, on workers that are up, the "
                               f"{TOP} task/queue pairs with most running."),
        timeseries("Oldest running by task",
                   [(top(f"max by (name, queue) ({q.g(m.TASK_OLDEST_RUNNING_AGE, *f)})"),
                     "{{name}} ({{queue}})")],
                   unit=SECONDS, w=8,
                   thresholds=steps(("green", None),
                                    ("red", cfg.max_runtime_seconds)),
                   description=f"Age of the longest-running task per name and queue, the "
                               f"{TOP} oldest: a task stuck holding a lock or a transaction "
                               f"grows here. Red from CeleryTaskRunningTooLong's default "
                               f"threshold (per-task thresholds in the rules config)."),
        timeseries("Interrupted by worker crashes", [
            # The ungrouped total pads with 0 (no series means none was interrupted); the
            # per-task lines cannot, a 0 inside `by (...)` would be a blank legend entry.
            (f"sum({interrupted}) or on () vector(0)", "all tasks"),
            (top(f"sum by (name, queue, worker) ({interrupted})"),
             "{{name}} ({{queue}}) on {{worker}}"),
        ], unit=COUNT, w=8,
            description=f"Tasks that had started on a worker that then went down without a "
                        f"terminal event, over the dashboard's time range, the {TOP} most "
                        f"per task, queue and worker. With acks_late these are redelivered; "
                        f"without it they are lost."),
    ]

    # Periodic tasks: per beat entry where the exporter reads the schedule (--beat-schedule,
    # --beat-database-url); per task name from task-sent everywhere.
    entry = "{{entry}} ({{name}})"
    periodic = [
        timeseries("Periodic entries overdue", [
            (top(f"max by (entry, name) ({q.g(m.PERIODIC_OVERDUE, f[1])})"), entry),
            (f"max by (reason) ({q.g(m.PERIODIC_SKIPPED)})", "not exported: {{reason}}"),
        ], unit=COUNT, w=8, step=True, min_value=0,
            thresholds=steps(("green", None), ("red", 1)),
            description=f"1 while a beat schedule entry is past its next run by more than the "
                        f"exporter's --beat-grace and its task was not sent "
                        f"(CeleryPeriodicTaskOverdue), the {TOP} overdue first; entries the "
                        f"exporter did not export (over its cap, unsupported schedule types) "
                        f"are counted too. Empty without a schedule source."),
        timeseries("Periodic entries: next run in", [
            (f"bottomk({TOP}, max by (entry, name) ({q.g(m.PERIODIC_NEXT_RUN, f[1])}) "
             f"- time())", entry),
        ], unit=SECONDS, w=8,
            thresholds=steps(("red", None), ("green", 0)),
            description=f"Seconds until each entry's next run by its schedule (interval "
                        f"or crontab, Celery's own arithmetic), the {TOP} soonest: a "
                        f"saw-tooth while beat runs; below 0 the run is late."),
        timeseries("Periodic entries: since last run", [
            (top(f"time() - max by (entry, name) ({q.g(m.PERIODIC_LAST_RUN, f[1])})"), entry),
        ], unit=SECONDS, w=8,
            description=f"Seconds since each entry's task was last sent (or "
                        f"django-celery-beat's last_run_at, when later), the {TOP} longest."),
        timeseries("Since last published by task",
                   [(top(f"time() - max by (name) ({q.g(m.TASK_LAST_SENT, f[1])})"),
                     "{{name}}")],
                   unit=SECONDS, w=24,
                   description=f"Seconds since a task of that name was last published "
                               f"(task-sent), the {TOP} longest silent: without a schedule "
                               f"source, a periodic task that stops being sent climbs here "
                               f"(CeleryPeriodicTaskOverdue with periodic_interval_seconds)."),
    ]

    return dashboard(
        title="Celery / Tasks",
        uid=UID,
        description="Per task: throughput by state, failures by exception, waits, runtimes.",
        q=q,
        templating=variables(q, queue=True, task=True),
        panels=layout([
            ("Throughput", throughput),
            ("Failures", failures),
            ("Latency", latency),
            ("Running and interrupted", running),
            ("Periodic tasks (beat)", periodic),
        ]),
    )

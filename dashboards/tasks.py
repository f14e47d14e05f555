"""Celery / Tasks: per task name rates, failures, waits and runtimes."""

from __future__ import annotations

from grafanalib import core as g

from celery_events_exporter import metrics as m

from .common import (
    QUANTILES,
    RATIO,
    SECONDS,
    TASKS_PER_SECOND,
    Options,
    Q,
    dashboard,
    layout,
    timeseries,
    variables,
)

UID = "celery-tasks"
FILENAME = "celery-tasks.json"

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

    throughput = [
        timeseries("Task states (selected tasks)",
                   [(q.sum_rate(metric, *f), state) for state, metric in _STATES],
                   unit=TASKS_PER_SECOND,
                   description="Events per second by state for the selected tasks."),
        timeseries("Finished by task", [(finished, "{{name}}")], unit=TASKS_PER_SECOND,
                   stack=True,
                   description="Executions that ended (succeeded + failed) per second."),
    ]

    failures = [
        timeseries(
            "Failure ratio by task",
            # `or 0 * finished` gives tasks without any failure a 0 line instead of none.
            [(f"({failed} or 0 * {finished}) / {finished}", "{{name}}")],
            unit=RATIO, min_value=0, max_value=1, w=8,
            description="Failed / (succeeded + failed) executions per task."),
        timeseries("Failures by exception",
                   [(by_task(m.TASK_FAILED, "name, exception"), "{{name}}: {{exception}}")],
                   unit=TASKS_PER_SECOND, w=8, stack=True,
                   description="Failed executions per second by task and exception class."),
        timeseries("Retries, rejections, revocations", [
            (by_task(m.TASK_RETRIED), "{{name}} retried"),
            (by_task(m.TASK_REJECTED), "{{name}} rejected"),
            (by_task(m.TASK_REVOKED, "name, reason"), "{{name}} revoked ({{reason}})"),
        ], unit=TASKS_PER_SECOND, w=8,
            description="Executions that ended in a retry, messages rejected by workers, "
                        "and revocations by reason (revoked, terminated, expired)."),
    ]

    def p95_by_task(metric: m.Metric) -> list[tuple[str, str]]:
        return [(q.quantile(0.95, metric, *f, by=("name",)), "{{name}}")]

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
        timeseries("Mean runtime by task", [(mean_by_task(m.RUNTIME), "{{name}}")],
                   unit=SECONDS, w=8,
                   description="Average execution time per task; with throughput, this is "
                               "the worker time each task consumes."),
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
        ]),
    )

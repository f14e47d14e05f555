"""Celery / Overview: is work flowing, how fast, and can we trust the numbers."""

from __future__ import annotations

from grafanalib import core as g

from celery_events_exporter import metrics as m

from .common import (
    COUNT,
    EVENTS_PER_SECOND,
    PER_SECOND,
    QUANTILES,
    RATIO,
    SECONDS,
    TASKS_PER_SECOND,
    Options,
    Q,
    dashboard,
    layout,
    stat,
    steps,
    timeseries,
    up_down_mappings,
    variables,
)

UID = "celery-overview"
FILENAME = "celery-overview.json"

_STATES = (
    ("sent", m.TASK_SENT), ("received", m.TASK_RECEIVED), ("started", m.TASK_STARTED),
    ("succeeded", m.TASK_SUCCEEDED), ("failed", m.TASK_FAILED), ("retried", m.TASK_RETRIED),
    ("rejected", m.TASK_REJECTED), ("revoked", m.TASK_REVOKED),
)
FINISHED = (m.TASK_SUCCEEDED, m.TASK_FAILED)


def success_ratio(q: Q, *extra: str) -> str:
    # Padding the numerator with 0 keeps the ratio at 0 (not absent) when every
    # execution failed and no succeeded series exists yet.
    return (f"(sum({q.rate(q.m(m.TASK_SUCCEEDED, *extra))}) or vector(0))"
            f" / sum({q.rate(q.any_of(FINISHED, *extra))})")


def build(opts: Options) -> g.Dashboard:
    q = Q.for_options(opts)
    queue_len = f"max by (queue) ({q.m(m.QUEUE_LENGTH)})"

    summary = [
        stat("Finished tasks/s", [(f"sum({q.rate(q.any_of(FINISHED))})", "")],
             unit=TASKS_PER_SECOND,
             description="Task executions that ended (succeeded + failed) per second."),
        stat("Success ratio", [(success_ratio(q), "")], unit=RATIO, decimals=2,
             thresholds=steps(("red", None), ("orange", 0.95), ("green", 0.99)),
             description="Succeeded / (succeeded + failed) executions. Retries are not "
                         "failures: a retried task counts once it finally ends."),
        stat("Queue wait p95", [(q.quantile(0.95, m.QUEUE_WAIT), "")], unit=SECONDS,
             thresholds=steps(("green", None), ("orange", 10), ("red", 60)),
             description="95th percentile of sent (or ETA) → started: what users feel as "
                         "task latency."),
        stat("Workers up", [(f"sum({q.m(m.WORKER_UP)})", "")], unit=COUNT,
             thresholds=steps(("red", None), ("green", 1)),
             description="Workers whose heartbeats arrive."),
        stat("Workers lost", [(q.workers_lost(), "")], unit=COUNT,
             thresholds=steps(("green", None), ("red", 1)),
             description="Workers that stopped heartbeating without a goodbye (a crash, not a "
                         "deploy) in the last --worker-down-retention (10 minutes by "
                         "default). Workers shut down cleanly are on the Workers dashboard."),
        stat("Messages queued", [(f"sum({queue_len})", "")], unit=COUNT,
             thresholds=steps(("green", None), ("orange", 100), ("red", 1000)),
             description="Messages waiting in broker queues, all queues."),
        stat("Prefetched tasks", [(f"sum({q.m(m.WORKER_TASKS_PREFETCHED)})", "")], unit=COUNT,
             description="Tasks held in worker prefetch buffers, received but not started "
                         "(ETA tasks excluded)."),
        stat("Exporter", [(f"min({q.up()})", "scrape"),
                          (f"min({q.m(m.BROKER_CONNECTED)})", "broker"),
                          (f"min({q.m(m.PROBE_SUCCESS)})", "probes")],
             unit=COUNT, mappings=up_down_mappings(),
             thresholds=steps(("red", None), ("green", 1)),
             description="Whether Prometheus can scrape the exporter, the exporter is "
                         "connected to the broker, and its last broker probes succeeded."),
    ]

    tasks = [
        timeseries(
            "Task throughput by state",
            [(q.sum_rate(metric), state) for state, metric in _STATES],
            unit=TASKS_PER_SECOND,
            description="Task events per second by state. sent needs task_send_sent_event "
                        "on producers; the others need workers started with -E."),
        timeseries(
            "Success ratio", [(success_ratio(q), "success ratio")], unit=RATIO,
            min_value=0, max_value=1,
            thresholds=steps(("red", None), ("green", 0.99)),
            description="Succeeded / (succeeded + failed) executions."),
    ]

    def quantiles(metric: m.Metric) -> list[tuple[str, str]]:
        return [(q.quantile(x, metric), f"p{round(x * 100)}") for x in QUANTILES]

    latency = [
        timeseries("Queue wait (sent → started)", quantiles(m.QUEUE_WAIT), unit=SECONDS, w=8,
                   description="Time from publish (or ETA, whichever is later) to execution "
                               "start, corrected for clock offsets."),
        timeseries("Prefetch wait (received → started)", quantiles(m.PREFETCH_WAIT),
                   unit=SECONDS, w=8,
                   description="Time tasks sat in a worker's prefetch buffer. High while "
                               "other workers idle means prefetching is hoarding work."),
        timeseries("Runtime (started → finished)", quantiles(m.RUNTIME), unit=SECONDS, w=8,
                   description="Execution time of succeeded and failed tasks."),
    ]

    fleet = [
        timeseries("Queue length", [(queue_len, "{{queue}}")], unit=COUNT, w=8,
                   description="Messages waiting in each broker queue (probe)."),
        timeseries("Workers", [(f"sum({q.m(m.WORKER_UP)})", "up"),
                               (q.workers_lost(), "lost"),
                               (f"sum({q.m(m.WORKER_CLEAN_SHUTDOWN)})", "shut down")],
                   unit=COUNT, w=8, step=True,
                   description="Live workers, workers recently lost (crashed) and workers "
                               "recently shut down cleanly (deploys, scale-in)."),
        timeseries("Worker task slots", [
            (f"sum({q.m(m.WORKER_TASKS_ACTIVE)})", "active"),
            (f"sum({q.m(m.WORKER_TASKS_PREFETCHED)})", "prefetched"),
            (f"sum({q.m(m.WORKER_TASKS_SCHEDULED)})", "scheduled (ETA)"),
        ], unit=COUNT, w=8,
            description="Tasks executing, waiting in prefetch buffers, and held for their "
                        "ETA across all workers."),
    ]

    exporter = [
        timeseries("Events ingested by type",
                   [(f"sum by (type) ({q.rate(q.m(m.EVENTS))})", "{{type}}")],
                   unit=EVENTS_PER_SECOND, w=6, stack=True,
                   description="Celery events the exporter consumed per second."),
        timeseries("Event lag", [
            (f"max({q.m(m.EVENT_LAG)})", "lag of last event"),
            (f"time() - max({q.m(m.LAST_EVENT)})", "since last event"),
        ], unit=SECONDS, w=6, thresholds=steps(("green", None), ("red", 30)),
            description="Receive time minus the sender's timestamp (includes clock offset "
                        "between hosts), and time since any event arrived."),
        timeseries("Exporter problems", [
            (f"sum by (reason) ({q.rate(q.m(m.EVENTS_INVALID))})", "invalid: {{reason}}"),
            (f"sum by (metric) ({q.rate(q.m(m.SERIES_DROPPED))})", "dropped: {{metric}}"),
            (f"sum by (reason) ({q.rate(q.m(m.TASKS_EVICTED))})", "evicted: {{reason}}"),
            (f"sum({q.rate(q.m(m.BROKER_RECONNECTS))})", "broker reconnects"),
            (f"sum by (probe) ({q.rate(q.m(m.PROBE_ERRORS))})", "probe errors: {{probe}}"),
            (f"sum by (metric) ({q.rate(q.m(m.WAITS_CLAMPED))})", "clamped: {{metric}}"),
        ], unit=PER_SECOND, w=6,
            description="Anything here means some numbers are incomplete: invalid events "
                        "dropped, series over the cap, tasks evicted before finishing, "
                        "reconnects, failing probes; clamped waits mean clock skew between "
                        "hosts. Empty is good."),
        timeseries("In-flight tasks tracked", [(f"sum({q.m(m.TASKS_TRACKED)})", "tracked")],
                   unit=COUNT, w=6,
                   description="Tasks the exporter holds between their first and final "
                               "event. Near --max-tasks means evictions are coming."),
    ]

    return dashboard(
        title="Celery / Overview",
        uid=UID,
        description="Celery task flow, latency, queues, workers and exporter health.",
        q=q,
        templating=variables(q),
        panels=layout([
            ("Summary", summary),
            ("Tasks", tasks),
            ("Latency", latency),
            ("Queues and workers", fleet),
            ("Exporter", exporter),
        ]),
    )

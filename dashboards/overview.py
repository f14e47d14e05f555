"""Celery / Overview: is work flowing, how fast, and can we trust the numbers."""

from __future__ import annotations

from grafanalib import core as g

from celery_events_exporter import metrics as m

from . import queues as queues_dashboard
from . import tasks as tasks_dashboard
from . import workers as workers_dashboard
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
    link,
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
    cfg = opts.rules
    queue_len = f"max by (queue) ({q.m(m.QUEUE_LENGTH)})"
    to_tasks = link("Celery / Tasks", tasks_dashboard.UID)
    to_queues = link("Celery / Queues", queues_dashboard.UID)
    to_workers = link("Celery / Workers", workers_dashboard.UID)
    queue_link = link("Queue ${__field.labels.queue}", queues_dashboard.UID,
                      "var-queue=${__field.labels.queue}")

    summary = [
        stat("Finished tasks/s", [(f"sum({q.rate(q.any_of(FINISHED))})", "")],
             unit=TASKS_PER_SECOND,
             description="Task executions that ended (succeeded + failed) per second."),
        stat("Success ratio", [(success_ratio(q), "")], unit=RATIO, decimals=2,
             thresholds=steps(("red", None), ("green", cfg.objective)),
             links=[to_tasks],
             description=f"Succeeded / (succeeded + failed) executions, red below the "
                         f"objective ({cfg.objective:.2%}; the alerts use per-queue "
                         f"objectives where configured). Retries are not failures: a retried "
                         f"task counts once it finally ends."),
        stat("Queue wait p95 (worst queue)", [(q.worst(0.95, m.QUEUE_WAIT), "")], unit=SECONDS,
             thresholds=steps(("green", None), ("red", cfg.queue_wait_p95_seconds)),
             links=[to_queues],
             description="95th percentile of sent (or ETA) → started in the queue that waits "
                         "longest: what users feel as task latency. Red from the "
                         "CeleryTaskQueueWaitHigh threshold."),
        stat("Workers up", [(q.workers_up(), "")], unit=COUNT,
             thresholds=steps(("red", None), ("green", 1)), links=[to_workers],
             description="Worker nodes whose heartbeats arrive (with grouped worker labels, "
                         "the live nodes of every group)."),
        stat("Workers lost", [(q.workers_lost(), "")], unit=COUNT,
             thresholds=steps(("green", None), ("red", 1)), links=[to_workers],
             description="Workers (or, with grouped labels, whole groups) that stopped "
                         "heartbeating without a goodbye (a crash, not a deploy) in the last "
                         "--worker-down-retention (10 minutes by default). Workers shut down "
                         "cleanly are on the Workers dashboard."),
        stat("Messages queued", [(f"sum({queue_len})", "")], unit=COUNT,
             thresholds=steps(("green", None), ("orange", cfg.queue_length_threshold)),
             links=[to_queues],
             description="Messages waiting in broker queues, all queues. Orange from the "
                         "CeleryQueueBacklogGrowing length threshold."),
        stat("Oldest waiting (worst queue)",
             [(f"max({q.g(m.QUEUE_OLDEST_WAITING_AGE)})", "")], unit=SECONDS,
             thresholds=steps(("green", None), ("red", cfg.oldest_waiting_seconds)),
             links=[to_queues],
             description="Age of the oldest message not yet received by a worker, in the "
                         "queue where it is oldest. Red from the CeleryQueueOldestWaitingHigh "
                         "threshold."),
        stat("Tasks interrupted (1h)",
             [(f"sum({q.increase(q.m(m.TASK_INTERRUPTED), '1h')}) or on () vector(0)", "")],
             unit=COUNT, thresholds=steps(("green", None), ("red", 1)), links=[to_tasks],
             description="Tasks that died with their worker (started, then the worker went "
                         "down without a terminal event) in the last hour."),
        stat("Prefetched tasks", [(f"sum({q.g(m.WORKER_TASKS_PREFETCHED)})", "")], unit=COUNT,
             description="Tasks held in worker prefetch buffers, received but not started "
                         "(ETA tasks excluded)."),
        # max: with an HA pair, one replica answering is the service up; a replica that
        # stops is CeleryExporterDown's business (per instance), not the front page's.
        stat("Exporter", [(f"max({q.up()})", "scrape"),
                          (f"max({q.m(m.BROKER_CONNECTED)})", "broker"),
                          (f"max({q.m(m.PROBE_SUCCESS)})", "probes")],
             unit=COUNT, mappings=up_down_mappings(),
             thresholds=steps(("red", None), ("green", 1)),
             description="Whether Prometheus can scrape the exporter, the exporter is "
                         "connected to the broker, and its last broker probes succeeded "
                         "(any replica of an HA pair)."),
    ]

    tasks = [
        timeseries(
            "Task throughput by state",
            [(q.sum_rate(metric), state) for state, metric in _STATES],
            unit=TASKS_PER_SECOND, links=[to_tasks],
            description="Task events per second by state. sent needs task_send_sent_event "
                        "on producers; the others need workers started with -E."),
        timeseries(
            "Success ratio", [(success_ratio(q), "success ratio")], unit=RATIO,
            min_value=0, max_value=1,
            thresholds=steps(("red", None), ("green", cfg.objective)),
            description="Succeeded / (succeeded + failed) executions."),
    ]

    def quantiles(metric: m.Metric) -> list[tuple[str, str]]:
        return [(q.quantile(x, metric), f"p{round(x * 100)}") for x in QUANTILES]

    latency = [
        timeseries("Queue wait p95 by queue (sent → started)",
                   [(q.quantile(0.95, m.QUEUE_WAIT, by=("queue",)), "{{queue}}")],
                   unit=SECONDS, w=8,
                   thresholds=steps(("green", None), ("red", cfg.queue_wait_p95_seconds)),
                   series_links=[queue_link],
                   description="Time from publish (or ETA, whichever is later) to execution "
                               "start, corrected for clock offsets, per queue: one quantile "
                               "over all queues would hide a slow one behind the fast ones."),
        timeseries("Prefetch wait (received → started)", quantiles(m.PREFETCH_WAIT),
                   unit=SECONDS, w=8,
                   description="Time tasks sat in a worker's prefetch buffer. High while "
                               "other workers idle means prefetching is hoarding work."),
        timeseries("Runtime (started → finished)", quantiles(m.RUNTIME), unit=SECONDS, w=8,
                   description="Execution time of succeeded and failed tasks."),
    ]

    fleet = [
        timeseries("Queue length", [(queue_len, "{{queue}}")], unit=COUNT, w=8,
                   series_links=[queue_link], links=[to_queues],
                   description="Messages waiting in each broker queue (probe)."),
        timeseries("Workers", [(q.workers_up(), "up"),
                               (q.workers_lost(), "lost"),
                               (q.workers_shut_down(), "shut down")],
                   unit=COUNT, w=8, step=True, links=[to_workers],
                   description="Live workers, workers recently lost (crashed) and workers "
                               "recently shut down cleanly (deploys, scale-in)."),
        timeseries("Worker task slots", [
            (f"sum({q.g(m.WORKER_TASKS_ACTIVE)})", "active"),
            (f"sum({q.g(m.WORKER_TASKS_PREFETCHED)})", "prefetched"),
            (f"sum({q.g(m.WORKER_TASKS_SCHEDULED)})", "scheduled (ETA)"),
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
            (f"max by (host) ({q.m(m.CLOCK_OFFSET)})", "clock offset: {{host}}"),
        ], unit=SECONDS, w=6, thresholds=steps(("green", None), ("red", cfg.event_lag_seconds)),
            description="Receive time minus the sender's timestamp (includes clock offset "
                        "between hosts), time since any event arrived, and each host's "
                        "estimated offset (clock skew plus the fastest transit)."),
        timeseries("Exporter problems", [
            (f"sum by (reason) ({q.rate(q.m(m.EVENTS_INVALID))})", "invalid: {{reason}}"),
            (f"sum by (metric) ({q.rate(q.m(m.SERIES_DROPPED))})", "dropped: {{metric}}"),
            (f"sum by (reason) ({q.rate(q.m(m.TASKS_EVICTED))})", "evicted: {{reason}}"),
            (f"sum({q.rate(q.m(m.BROKER_RECONNECTS))})", "broker reconnects"),
            (f"sum by (probe) ({q.rate(q.m(m.PROBE_ERRORS))})", "probe errors: {{probe}}"),
            (f"sum by (metric) ({q.rate(q.m(m.WAITS_CLAMPED))})", "clamped: {{metric}}"),
            (f"sum by (type) ({q.rate(q.m(m.EVENTS_DUPLICATE))})", "duplicate: {{type}}"),
        ], unit=PER_SECOND, w=6,
            description="Anything here means some numbers are incomplete: invalid events "
                        "dropped, series over the cap, tasks evicted before finishing, "
                        "reconnects, failing probes; clamped waits mean clock skew between "
                        "hosts; duplicates are re-sent terminal events, dropped so nothing "
                        "is counted twice. Empty is good."),
        timeseries("In-flight tasks tracked", [(f"max({q.m(m.TASKS_TRACKED)})", "tracked")],
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

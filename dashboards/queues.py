"""Celery / Queues: backlog, growth, consumers, and how long tasks wait per queue."""

from __future__ import annotations

from grafanalib import core as g

from celery_events_exporter import metrics as m

from .common import (
    COUNT,
    MESSAGES_PER_SECOND,
    PER_SECOND,
    RATIO,
    SECONDS,
    TASKS_PER_SECOND,
    Options,
    Q,
    dashboard,
    layout,
    link,
    steps,
    timeseries,
    variables,
)

UID = "celery-queues"
FILENAME = "celery-queues.json"


def build(opts: Options) -> g.Dashboard:
    q = Q.for_options(opts)
    cfg = opts.rules
    f = 'queue=~"$queue"'
    to_tasks = link("Tasks of queue ${__field.labels.queue}", "celery-tasks",
                    "var-queue=${__field.labels.queue}")

    # max, not sum: two exporters watching one broker report the same queue twice.
    def per_queue(metric: m.Metric) -> str:
        return f"max by (queue) ({q.m(metric, f)})"

    length = per_queue(m.QUEUE_LENGTH)
    started = f"sum by (queue) ({q.rate(q.m(m.TASK_STARTED, f))})"

    backlog = [
        timeseries("Queue length", [(length, "{{queue}}")], unit=COUNT,
                   thresholds=steps(("green", None), ("orange", cfg.queue_length_threshold)),
                   series_links=[to_tasks],
                   description="Messages waiting in the broker (Redis: all priority lists; "
                               "RabbitMQ: ready messages)."),
        timeseries("Oldest waiting message", [(per_queue(m.QUEUE_OLDEST_WAITING_AGE),
                                                "{{queue}}")],
                   unit=SECONDS, series_links=[to_tasks],
                   thresholds=steps(("green", None), ("red", cfg.oldest_waiting_seconds)),
                   description="Age of the oldest task published to the queue and not yet "
                               "received by a worker (ETA tasks from their ETA); 0 when the "
                               "queue is empty. A stalled queue grows here while its length "
                               "may look flat. Red from CeleryQueueOldestWaitingHigh."),
        timeseries("Queue growth",
                   [(f"max by (queue) (deriv({q.m(m.QUEUE_LENGTH, f)}[$__rate_interval]))",
                     "{{queue}}")],
                   unit=MESSAGES_PER_SECOND,
                   description="Per-second slope of the queue length. Positive for long means "
                               "producers outpace consumers."),
        timeseries("Consumers", [(per_queue(m.QUEUE_CONSUMERS), "{{queue}}")], unit=COUNT,
                   w=8, step=True,
                   description="Consumers of each queue (Redis: live workers consuming it)."),
        timeseries("Published vs started", [
            (f"sum by (queue) ({q.rate(q.m(m.TASK_SENT, f))})", "{{queue}} sent"),
            (started, "{{queue}} started"),
        ], unit=TASKS_PER_SECOND, w=8,
            description="Inflow (task-sent events, needs task_send_sent_event) against "
                        "outflow (executions started)."),
        timeseries("Estimated time to drain", [(f"{length} / {started}", "{{queue}}")],
                   unit=SECONDS, w=8,
                   description="Queue length divided by the current start rate: how long the "
                               "backlog lasts if nothing new arrives."),
    ]

    latency = [
        timeseries("Queue wait p95 by queue",
                   [(q.quantile(0.95, m.QUEUE_WAIT, f, by=("queue",)), "{{queue}}")],
                   unit=SECONDS, series_links=[to_tasks],
                   thresholds=steps(("green", None), ("red", cfg.queue_wait_p95_seconds)),
                   description="Sent (or ETA) → started, 95th percentile per queue."),
        timeseries("Prefetch wait p95 by queue",
                   [(q.quantile(0.95, m.PREFETCH_WAIT, f, by=("queue",)), "{{queue}}")],
                   unit=SECONDS,
                   thresholds=steps(("green", None), ("red", cfg.prefetch_wait_p95_seconds)),
                   description="Received → started in worker buffers, 95th percentile per "
                               "queue."),
    ]

    broker = [
        timeseries("Unacked messages (RabbitMQ)",
                   [(per_queue(m.QUEUE_MESSAGES_UNACKED), "{{queue}}")], unit=COUNT, w=6,
                   description="Delivered but unacknowledged messages, from the RabbitMQ "
                               "management API. Empty on Redis."),
        timeseries("Consumer utilisation (RabbitMQ)",
                   [(per_queue(m.QUEUE_CONSUMER_UTILISATION), "{{queue}}")], unit=RATIO, w=6,
                   min_value=0, max_value=1,
                   description="Fraction of time the queue could deliver immediately. Low "
                               "with a backlog means consumers are saturated or prefetch is "
                               "too small. Empty on Redis."),
        timeseries("Probe duration", [(f"max by (probe) ({q.m(m.PROBE_DURATION)})", "{{probe}}"),
                                      (f"time() - (max by (probe) ({q.m(m.PROBE_LAST_SUCCESS)})"
                                       " > 0)", "{{probe}}: since last success")],
                   unit=SECONDS, w=6,
                   description="Duration of the last run of each broker probe, and the time "
                               "since each last succeeded. Queue gauges are only as fresh as "
                               "these probes."),
        timeseries("Probe errors", [(f"sum by (probe) ({q.rate(q.m(m.PROBE_ERRORS))})",
                                     "{{probe}}")],
                   unit=PER_SECOND, w=6,
                   description="Failed probe runs per second; queue gauges keep their last "
                               "value while a probe fails. Empty is good."),
    ]

    return dashboard(
        title="Celery / Queues",
        uid=UID,
        description="Queue length and growth, consumers, drain time and waits per queue.",
        q=q,
        templating=variables(q, queue=True),
        panels=layout([
            ("Backlog", backlog),
            ("Latency", latency),
            ("Broker", broker),
        ]),
    )

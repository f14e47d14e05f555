"""The metric catalogue: the one source of truth for names, help texts, labels and buckets.

The collector renders from it, and the dashboards and alert rules import it, so a renamed
metric breaks the build rather than a dashboard panel in production.

Names are stored without the configurable prefix; `Metric.full(prefix)` gives the exposed
name. Counters keep their `_total` suffix here because that is the name users query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]

DEFAULT_PREFIX = "celery"

# Waits reach minutes when a queue backs up, and an hour for ETA-free backlogs we still
# want to see; runtime spans short I/O tasks to long reports.
QUEUE_WAIT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
)
PREFETCH_WAIT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
)
RUNTIME_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
)


@dataclass(frozen=True)
class Metric:
    key: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None

    def full(self, prefix: str = DEFAULT_PREFIX) -> str:
        return f"{prefix}_{self.key}" if prefix else self.key

    def family(self, prefix: str = DEFAULT_PREFIX) -> str:
        """The family name prometheus_client wants (counters without `_total`)."""
        name = self.full(prefix)
        if self.kind == "counter" and name.endswith("_total"):
            return name[: -len("_total")]
        return name


_TASK = ("name", "queue")
_TASK_W = ("name", "queue", "worker")

TASK_SENT = Metric("task_sent_total", "counter",
                   "Tasks published by producers (task-sent events).", _TASK)
TASK_RECEIVED = Metric("task_received_total", "counter",
                       "Tasks received by a worker into its prefetch buffer.", _TASK_W)
TASK_STARTED = Metric("task_started_total", "counter",
                      "Task executions started by a worker pool.", _TASK_W)
TASK_SUCCEEDED = Metric("task_succeeded_total", "counter",
                        "Task executions that succeeded.", _TASK_W)
TASK_FAILED = Metric("task_failed_total", "counter",
                     "Task executions that failed, by exception class name.",
                     (*_TASK_W, "exception"))
TASK_RETRIED = Metric("task_retried_total", "counter",
                      "Task executions that ended in a retry.", _TASK_W)
TASK_REJECTED = Metric("task_rejected_total", "counter",
                       "Task messages rejected by a worker.", _TASK_W)
TASK_REVOKED = Metric("task_revoked_total", "counter",
                      "Tasks revoked, by reason (revoked, terminated, expired).",
                      (*_TASK_W, "reason"))

TASK_COUNTERS: tuple[Metric, ...] = (
    TASK_SENT, TASK_RECEIVED, TASK_STARTED, TASK_SUCCEEDED, TASK_FAILED, TASK_RETRIED,
    TASK_REJECTED, TASK_REVOKED,
)

QUEUE_WAIT = Metric(
    "task_queue_wait_seconds", "histogram",
    "Time from publish (or ETA/countdown, whichever is later) to execution start, "
    "corrected for clock offsets between hosts.",
    _TASK, QUEUE_WAIT_BUCKETS)
PREFETCH_WAIT = Metric(
    "task_prefetch_wait_seconds", "histogram",
    "Time a task spent in a worker's prefetch buffer: received to started, worker clock, "
    "ETA tasks excluded.",
    _TASK, PREFETCH_WAIT_BUCKETS)
RUNTIME = Metric(
    "task_runtime_seconds", "histogram",
    "Task execution time, started to finished, for succeeded and failed executions.",
    _TASK, RUNTIME_BUCKETS)

HISTOGRAMS: tuple[Metric, ...] = (QUEUE_WAIT, PREFETCH_WAIT, RUNTIME)

# Incident signals: what is stuck, what died with its worker, what nobody picks up.
TASK_RUNNING = Metric("task_running", "gauge",
                      "Tasks started and not finished, on workers that are up (absent when "
                      "none runs).", _TASK)
TASK_OLDEST_RUNNING_AGE = Metric(
    "task_oldest_running_age_seconds", "gauge",
    "Age of the longest-running task of that name and queue (exporter monotonic clock, "
    "start corrected for the worker's clock offset); absent when none runs.", _TASK)
TASK_INTERRUPTED = Metric(
    "task_interrupted_total", "counter",
    "Tasks that had started on a worker that then went down (heartbeat timeout, "
    "worker-offline, or a restart announced by worker-online) without a terminal event: "
    "the work that died with its worker.", _TASK_W)

QUEUE_OLDEST_WAITING_AGE = Metric(
    "queue_oldest_waiting_age_seconds", "gauge",
    "Age of the oldest task published to the queue (task-sent) and not yet received by a "
    "worker; ETA/countdown tasks count from their ETA. 0 when none waits or when the queue "
    "probe finds the queue empty. Needs task_send_sent_event on producers.", ("queue",))

WORKER_LAST_RECEIVED = Metric(
    "worker_last_task_received_timestamp_seconds", "gauge",
    "When the worker last received a task (task-received, exporter clock); before its first, "
    "when it came online or the exporter first heard of it. A worker that heartbeats while "
    "this stands still and its queues have a backlog no longer consumes (a ghost).",
    ("worker",))
WORKER_QUEUE = Metric("worker_queue_info", "gauge",
                      "Constant 1 for each queue the worker consumes (inspect active_queues): "
                      "joins worker signals to queue signals.", ("worker", "queue"))
TASK_LAST_SENT = Metric("task_last_sent_timestamp_seconds", "gauge",
                        "When a task of that name was last published (task-sent received, "
                        "exporter clock): a dead-man's switch for periodic tasks.", ("name",))

# Periodic tasks, per beat schedule entry (--beat-schedule / --beat-database-url, read on the
# probe timer). `entry` is the schedule's key (django-celery-beat: PeriodicTask.name), `name`
# the task name as on every task metric, so the two join.
_ENTRY = ("entry", "name")
PERIODIC_LAST_RUN = Metric(
    "periodic_task_last_run_timestamp_seconds", "gauge",
    "When the entry's task was last sent (task-sent, exporter clock) or, if later, the "
    "schedule database's last_run_at; absent until either is known.", _ENTRY)
PERIODIC_NEXT_RUN = Metric(
    "periodic_task_next_run_timestamp_seconds", "gauge",
    "When the schedule expects the entry to run next, from its last run (before any: from "
    "when the exporter first read the entry), by Celery's own interval and crontab "
    "arithmetic.", _ENTRY)
PERIODIC_OVERDUE = Metric(
    "periodic_task_overdue", "gauge",
    "1 when the entry's next run is more than --beat-grace seconds in the past and its task "
    "has not been sent since: beat is down, stuck, or not running that entry.", _ENTRY)

INCIDENT_METRICS: tuple[Metric, ...] = (
    TASK_RUNNING, TASK_OLDEST_RUNNING_AGE, TASK_INTERRUPTED, QUEUE_OLDEST_WAITING_AGE,
    WORKER_LAST_RECEIVED, WORKER_QUEUE, TASK_LAST_SENT, PERIODIC_LAST_RUN, PERIODIC_NEXT_RUN,
    PERIODIC_OVERDUE,
)
PERIODIC_METRICS: tuple[Metric, ...] = (PERIODIC_LAST_RUN, PERIODIC_NEXT_RUN, PERIODIC_OVERDUE)

WORKER_UP = Metric("worker_up", "gauge",
                   "1 while the worker's heartbeats arrive, 0 after the heartbeat timeout or "
                   "worker-offline (kept for the down retention, then removed).", ("worker",))
WORKER_TASKS_ACTIVE = Metric("worker_tasks_active", "gauge",
                             "Tasks executing on the worker, from its last heartbeat.",
                             ("worker",))
WORKER_TASKS_PREFETCHED = Metric("worker_tasks_prefetched", "gauge",
                                 "Tasks received by the worker and not started yet, ETA tasks "
                                 "excluded (the prefetch backlog).", ("worker",))
WORKER_TASKS_SCHEDULED = Metric("worker_tasks_scheduled", "gauge",
                                "ETA/countdown tasks held by the worker until their time.",
                                ("worker",))
WORKER_LAST_HEARTBEAT = Metric("worker_last_heartbeat_timestamp_seconds", "gauge",
                               "When the exporter last heard from the worker, by heartbeat or "
                               "task event (exporter clock).", ("worker",))
WORKER_INFO = Metric("worker_info", "gauge",
                     "Constant 1, labelled with the worker's software identity.",
                     ("worker", "version", "implementation", "system"))
WORKER_POOL_PROCESSES = Metric("worker_pool_processes", "gauge",
                               "Pool size (max concurrency) reported by inspect stats.",
                               ("worker",))
WORKER_PREFETCH_LIMIT = Metric("worker_prefetch_limit", "gauge",
                               "Prefetch count reported by inspect stats.", ("worker",))
WORKER_TASK_EVENTS_MISSING = Metric(
    "worker_task_events_missing", "gauge",
    "1 when the worker processes tasks (heartbeat 'processed' grows) but sends no task "
    "events: start it with -E or set worker_send_task_events.", ("worker",))

WORKER_CLEAN_SHUTDOWN = Metric(
    "worker_clean_shutdown", "gauge",
    "1 while the worker is down after announcing its shutdown (worker-offline: a deploy or a "
    "scale-in), 0 while it is up or after it vanished without a word (a crash). With grouped "
    "worker labels, 1 only when every node of the group shut down cleanly.", ("worker",))

WORKER_GAUGES: tuple[Metric, ...] = (
    WORKER_UP, WORKER_TASKS_ACTIVE, WORKER_TASKS_PREFETCHED, WORKER_TASKS_SCHEDULED,
    WORKER_LAST_HEARTBEAT, WORKER_TASK_EVENTS_MISSING, WORKER_CLEAN_SHUTDOWN,
)

QUEUE_LENGTH = Metric("queue_length", "gauge",
                      "Messages waiting in the queue (Redis: all priority lists; RabbitMQ: "
                      "ready messages).", ("queue",))
QUEUE_CONSUMERS = Metric("queue_consumers", "gauge",
                         "Consumers of the queue (RabbitMQ: from the broker; Redis: live "
                         "workers consuming it).", ("queue",))
QUEUE_MESSAGES_UNACKED = Metric("queue_messages_unacked", "gauge",
                                "Delivered, unacknowledged messages (RabbitMQ management API).",
                                ("queue",))
QUEUE_CONSUMER_UTILISATION = Metric("queue_consumer_utilisation", "gauge",
                                    "Fraction of time the queue could deliver to consumers "
                                    "immediately (RabbitMQ management API).", ("queue",))

BUILD_INFO = Metric("exporter_build_info", "gauge",
                    "Constant 1, labelled with the exporter's version and libraries.",
                    ("version", "python", "celery", "kombu"))
BROKER_CONNECTED = Metric("exporter_broker_connected", "gauge",
                          "1 while the event consumer is connected to the broker.")
BROKER_RECONNECTS = Metric("exporter_broker_reconnects_total", "counter",
                           "Times the event consumer lost its broker connection.")
EVENTS = Metric("exporter_events_total", "counter",
                "Events ingested, by event type.", ("type",))
EVENTS_INVALID = Metric("exporter_events_invalid_total", "counter",
                        "Messages or events dropped as invalid, by reason "
                        "(value_out_of_range: the event counts, its runtime is dropped).",
                        ("reason",))
EVENTS_DUPLICATE = Metric("exporter_events_duplicate_total", "counter",
                          "Task events dropped because that step of the task was counted "
                          "already (Celery re-sends buffered events after a reconnect): a "
                          "second end of the same kind, or a start after the end, by event "
                          "type.", ("type",))
LAST_EVENT = Metric("exporter_last_event_timestamp_seconds", "gauge",
                    "When the last event was received (exporter clock).")
EVENT_LAG = Metric("exporter_event_lag_seconds", "gauge",
                   "Receive time minus the sender's timestamp for the last event processed "
                   "(includes clock offset between hosts).")
TASKS_TRACKED = Metric("exporter_tasks_tracked", "gauge",
                       "Tasks in the in-flight table.")
TASKS_EVICTED = Metric("exporter_tasks_evicted_total", "counter",
                       "Tasks dropped from the in-flight table before a terminal event, by "
                       "reason (capacity, ttl).", ("reason",))
SERIES_DROPPED = Metric("exporter_series_dropped_total", "counter",
                        "Observations dropped because the metric hit its series cap.",
                        ("metric",))
CLOCK_OFFSET = Metric("exporter_clock_offset_seconds", "gauge",
                      "Estimated receive time minus sender timestamp per host (clock offset "
                      "plus the fastest transit), as used to correct cross-host waits.",
                      ("host",))
WAITS_CLAMPED = Metric("exporter_waits_clamped_total", "counter",
                       "Wait observations that came out negative (clock skew) and were "
                       "recorded as 0.", ("metric",))
PROBE_DURATION = Metric("exporter_probe_duration_seconds", "gauge",
                        "Duration of the last run of each broker probe.", ("probe",))
PROBE_SUCCESS = Metric("exporter_probe_success", "gauge",
                       "1 if the last run of the probe succeeded.", ("probe",))
PROBE_ERRORS = Metric("exporter_probe_errors_total", "counter",
                      "Failed probe runs.", ("probe",))
WORKERS_TASK_EVENTS_MISSING = Metric(
    "exporter_task_events_missing", "gauge",
    "1 when live workers process tasks but no task events arrive at all (events disabled).")
PROBE_LAST_SUCCESS = Metric(
    "exporter_probe_last_success_timestamp_seconds", "gauge",
    "When each broker probe last succeeded (0: not yet). Every probe run has a deadline, so "
    "a stalled broker stops this clock instead of freezing the probe.", ("probe",))
PERIODIC_SKIPPED = Metric(
    "exporter_periodic_entries_skipped", "gauge",
    "Beat schedule entries not exported at the last schedule read, by reason (over_cap: "
    "past --beat-max-entries; unsupported: a schedule type other than interval or crontab; "
    "invalid: a schedule Celery cannot compute; excluded: the task name is filtered out).",
    ("reason",))

ALL: tuple[Metric, ...] = (
    *TASK_COUNTERS, *HISTOGRAMS, *INCIDENT_METRICS, *WORKER_GAUGES, WORKER_INFO,
    WORKER_POOL_PROCESSES,
    WORKER_PREFETCH_LIMIT, QUEUE_LENGTH, QUEUE_CONSUMERS, QUEUE_MESSAGES_UNACKED,
    QUEUE_CONSUMER_UTILISATION, BUILD_INFO, BROKER_CONNECTED, BROKER_RECONNECTS, EVENTS,
    EVENTS_INVALID, EVENTS_DUPLICATE, LAST_EVENT, EVENT_LAG, TASKS_TRACKED, TASKS_EVICTED,
    SERIES_DROPPED, WAITS_CLAMPED, CLOCK_OFFSET, PROBE_DURATION, PROBE_SUCCESS, PROBE_ERRORS,
    WORKERS_TASK_EVENTS_MISSING, PROBE_LAST_SUCCESS, PERIODIC_SKIPPED,
)

BY_KEY: dict[str, Metric] = {m.key: m for m in ALL}

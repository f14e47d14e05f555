"""Selectors, thresholds and the objective: everything a deployment may change, in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

from celery_events_exporter.metrics import DEFAULT_PREFIX

RUNBOOK = ("https://github.com/celery-events-exporter/celery-events-exporter/blob/main/"
           "docs/runbook.md")

# The exporter's defaults the worker-down alert must work with (see exporter/metrics.py
# WORKER_UP): heartbeats every 2 s, down after 2 missed intervals, the 0 series kept for
# --worker-down-retention, and the scrape interval we ship.
HEARTBEAT_TIMEOUT_SECONDS = 4.0
SCRAPE_INTERVAL_SECONDS = 15.0
# Prometheus' default global evaluation_interval; rule groups here do not override it.
EVALUATION_INTERVAL_SECONDS = 60.0

# Prometheus durations, compound ones included ("1h30m", "9m45s").
_DURATION = re.compile(r"^(?:\d+(?:ms|[smhdwy]))+$")
_PART = re.compile(r"(\d+)(ms|[smhdwy])")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800,
                 "y": 31536000}


def seconds(duration: str) -> float:
    if not _DURATION.match(duration):
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _PART.findall(duration))


@dataclass(frozen=True)
class RulesConfig:
    prefix: str = field(default=DEFAULT_PREFIX, metadata={"help": "the exporter's metric prefix"})
    job_selector: str = field(default='job="celery"', metadata={
        "help": "label matchers selecting the exporter's series, without braces"})
    cluster_label: str = field(default="", metadata={
        "help": "label that tells clusters apart; kept in every aggregation"})
    runbook_url: str = field(default=RUNBOOK, metadata={
        "help": "runbook document; alerts link to #<alertname lowercased>"})

    objective: float = field(default=0.99, metadata={
        "help": "task success objective (succeeded / (succeeded + failed))"})
    budget_page_for: str = field(default="2m", metadata={
        "help": "for: of the fast-burn (page) CeleryTaskFailureBudgetBurn"})
    budget_ticket_for: str = field(default="15m", metadata={
        "help": "for: of the slow-burn (ticket) CeleryTaskFailureBudgetBurn"})

    queue_wait_p95_seconds: float = field(default=60.0, metadata={
        "help": "CeleryTaskQueueWaitHigh: queue wait p95 threshold, seconds"})
    queue_wait_for: str = field(default="10m", metadata={"help": "CeleryTaskQueueWaitHigh for:"})

    prefetch_wait_p95_seconds: float = field(default=30.0, metadata={
        "help": "CeleryPrefetchBacklog: prefetch wait p95 threshold, seconds"})
    prefetch_backlog_for: str = field(default="10m", metadata={
        "help": "CeleryPrefetchBacklog for:"})

    queue_length_threshold: float = field(default=100.0, metadata={
        "help": "CeleryQueueBacklogGrowing: queue length threshold, messages"})
    queue_growth_window: str = field(default="10m", metadata={
        "help": "CeleryQueueBacklogGrowing: window of the growth (deriv) check"})
    queue_backlog_for: str = field(default="10m", metadata={
        "help": "CeleryQueueBacklogGrowing for:"})

    no_consumers_min_length: float = field(default=0.0, metadata={
        "help": "CeleryQueueNoConsumers: fire when length is above this, messages"})
    no_consumers_for: str = field(default="10m", metadata={"help": "CeleryQueueNoConsumers for:"})

    worker_down_for: str = field(default="2m", metadata={"help": "CeleryWorkerDown for:"})
    worker_down_on_clean_shutdown: bool = field(default=False, metadata={
        "help": "CeleryWorkerDown also for workers that announced their shutdown (deploys, "
                "scale-in); CeleryNoWorkers still fires when none is left"})
    worker_down_retention: str = field(default="10m", metadata={
        "help": "the exporter's --worker-down-retention; CeleryWorkerDown must fire well "
                "inside it"})
    no_workers_for: str = field(default="5m", metadata={"help": "CeleryNoWorkers for:"})
    events_missing_for: str = field(default="5m", metadata={
        "help": "CeleryTaskEventsMissing for:"})
    exporter_down_for: str = field(default="5m", metadata={"help": "CeleryExporterDown for:"})
    broker_disconnected_for: str = field(default="2m", metadata={
        "help": "CeleryExporterBrokerDisconnected for:"})

    event_lag_seconds: float = field(default=30.0, metadata={
        "help": "CeleryExporterFallingBehind: event lag threshold, seconds"})
    falling_behind_window: str = field(default="10m", metadata={
        "help": "CeleryExporterFallingBehind: window for dropped/invalid/evicted increases"})
    falling_behind_for: str = field(default="15m", metadata={
        "help": "CeleryExporterFallingBehind for:"})

    def __post_init__(self) -> None:
        if not 0 < self.objective < 1:
            raise ValueError(f"--objective must be between 0 and 1 (exclusive), "
                             f"got {self.objective}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_for", "_window", "_retention")):
                try:
                    seconds(value)
                except ValueError as exc:
                    raise ValueError(f"--{f.name.replace('_', '-')}: {exc}") from None
            elif isinstance(value, float) and value < 0:
                raise ValueError(f"--{f.name.replace('_', '-')} must not be negative")
        if self.cluster_label and not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", self.cluster_label):
            raise ValueError(f"--cluster-label: not a label name: {self.cluster_label!r}")
        if self.prefix and not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", self.prefix):
            raise ValueError(f"--prefix: not a metric name prefix: {self.prefix!r}")
        sel = self.job_selector.strip()
        if sel.startswith("{") or sel.endswith("}"):
            raise ValueError('--job-selector: give matchers without braces, e.g. job="celery"')
        # The worst case from a worker's death to the alert firing is its `for:` plus the
        # heartbeat timeout, one scrape and one evaluation to notice. After the retention
        # the exporter removes the series and the alert resolves, so the alert must have
        # fired with room to spare (half the retention) for Alertmanager to notify.
        detect = HEARTBEAT_TIMEOUT_SECONDS + SCRAPE_INTERVAL_SECONDS + EVALUATION_INTERVAL_SECONDS
        if seconds(self.worker_down_for) + detect > seconds(self.worker_down_retention) / 2:
            raise ValueError(
                f"--worker-down-for {self.worker_down_for} is too long for a worker down "
                f"retention of {self.worker_down_retention}: the exporter drops a dead "
                f"worker's series after the retention, so the alert would fire late or never")

    @property
    def group_labels(self) -> tuple[str, ...]:
        """Labels every aggregation keeps: one SLO per Celery app (job) and cluster."""
        return (self.cluster_label, "job") if self.cluster_label else ("job",)

    @property
    def level(self) -> str:
        """The `level` part of recording rule names for (group labels, queue)."""
        return "_".join((*self.group_labels, "queue"))

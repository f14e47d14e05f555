"""Selectors, thresholds and objectives: everything a deployment may change, in one place.

One `RulesConfig` drives both generators: the rules read every threshold from it, and the
dashboards draw the same thresholds, so a changed objective cannot leave a panel green
while its alert fires. It comes from flags, from a YAML file (`--config`), or both (flags
win); `queues:` and `tasks:` in the file override objectives per queue and per task.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

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
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

# What a `queues:` / `tasks:` entry of the config file may override.
QUEUE_KEYS = frozenset({"objective", "burn_min_executions", "queue_wait_p95_seconds"})
TASK_KEYS = frozenset({"task_failure_ratio", "task_failure_min_executions",
                       "max_runtime_seconds", "periodic_interval_seconds"})
# Task settings that are limits, not counts: 0 would alert on every task of that name.
_POSITIVE_TASK_KEYS = frozenset({"max_runtime_seconds", "periodic_interval_seconds"})
# The incident alerts' per-task defaults: the demo's slow report (runs ~10 min). No
# periodic_interval_seconds: the exporter reads the demo's beat schedule (--beat-schedule),
# and CeleryPeriodicTaskOverdue fires per entry from it. A `tasks:` section in the config
# file replaces these.
DEFAULT_TASKS: Mapping[str, Mapping[str, float]] = {
    "tasks.slow_report": {"max_runtime_seconds": 660.0},
}


def seconds(duration: str) -> float:
    if not _DURATION.match(duration):
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _PART.findall(duration))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class RulesConfig:
    prefix: str = field(default=DEFAULT_PREFIX, metadata={"help": "the exporter's metric prefix"})
    job_selector: str = field(default='job="celery"', metadata={
        "help": "label matchers selecting the exporter's series, without braces"})
    cluster_label: str = field(default="", metadata={
        "help": "label that tells clusters apart; kept in every aggregation"})
    replica_labels: str = field(default="instance,pod", metadata={
        "help": "comma-separated target labels that tell HA replicas of one exporter apart; "
                "queries keep one replica's value per series (max without these labels)"})
    runbook_url: str = field(default=RUNBOOK, metadata={
        "help": "runbook document; alerts link to #<alertname lowercased>"})

    objective: float = field(default=0.99, metadata={
        "help": "task success objective (succeeded / (succeeded + failed)); per queue in "
                "the config file's queues:"})
    burn_min_executions: float = field(default=100.0, metadata={
        "help": "CeleryTaskFailureBudgetBurn: executions a queue must have finished in the "
                "long window before its failure ratio can alert (quiet queues)"})
    burn_1h_for: str = field(default="2m", metadata={"help": "for: of the 1h/5m burn (page)"})
    burn_6h_for: str = field(default="15m", metadata={"help": "for: of the 6h/30m burn (page)"})
    burn_1d_for: str = field(default="1h", metadata={"help": "for: of the 1d/2h burn (ticket)"})
    burn_3d_for: str = field(default="3h", metadata={"help": "for: of the 3d/6h burn (ticket)"})

    task_failure_ratio: float = field(default=0.5, metadata={
        "help": "CeleryTaskFailing: failure ratio of one task name over the window; per "
                "task in the config file's tasks:"})
    task_failure_min_executions: float = field(default=5.0, metadata={
        "help": "CeleryTaskFailing: executions of the task in the window before it can fire"})
    task_failure_window: str = field(default="30m", metadata={
        "help": "CeleryTaskFailing: window of the per-task failure ratio"})
    task_failure_for: str = field(default="10m", metadata={"help": "CeleryTaskFailing for:"})

    tasks_dropped_threshold: float = field(default=0.0, metadata={
        "help": "CeleryTasksDropped: fire when more tasks than this expired or were rejected "
                "in the window"})
    tasks_dropped_window: str = field(default="15m", metadata={
        "help": "CeleryTasksDropped: window of the expired + rejected count"})
    tasks_dropped_for: str = field(default="5m", metadata={"help": "CeleryTasksDropped for:"})

    queue_wait_p95_seconds: float = field(default=60.0, metadata={
        "help": "CeleryTaskQueueWaitHigh: queue wait p95 threshold, seconds; per queue in "
                "the config file's queues:"})
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

    stuck_min_length: float = field(default=0.0, metadata={
        "help": "CeleryQueueStuck: fire when length is above this and nothing starts"})
    stuck_window: str = field(default="15m", metadata={
        "help": "CeleryQueueStuck / CeleryQueueNoConsumers: window without any task start"})
    stuck_for: str = field(default="5m", metadata={"help": "CeleryQueueStuck for:"})

    no_consumers_min_length: float = field(default=0.0, metadata={
        "help": "CeleryQueueNoConsumers: fire when length is above this, messages"})
    no_consumers_for: str = field(default="10m", metadata={"help": "CeleryQueueNoConsumers for:"})

    worker_down_for: str = field(default="2m", metadata={"help": "CeleryWorkerDown for:"})
    worker_down_on_clean_shutdown: bool = field(default=False, metadata={
        "help": "CeleryWorkerDown also for workers that announced their shutdown (deploys, "
                "scale-in); CeleryNoWorkers still fires when none is left"})
    worker_down_retention: str = field(default="10m", metadata={
        "help": "the exporter's --worker-down-retention (the dashboards' 'lost' window)"})
    worker_down_memory: str = field(default="1d", metadata={
        "help": "CeleryWorkerDown keeps firing this long after the exporter forgot a dead "
                "worker, unless it comes back (silence it to acknowledge)"})
    no_workers_for: str = field(default="5m", metadata={"help": "CeleryNoWorkers for:"})
    events_missing_for: str = field(default="5m", metadata={
        "help": "CeleryTaskEventsMissing for:"})
    exporter_down_for: str = field(default="5m", metadata={"help": "CeleryExporterDown for:"})
    exporter_absent_for: str = field(default="5m", metadata={
        "help": "CeleryExporterAbsent for:"})
    broker_disconnected_for: str = field(default="2m", metadata={
        "help": "CeleryExporterBrokerDisconnected for:"})

    event_lag_seconds: float = field(default=30.0, metadata={
        "help": "CeleryExporterFallingBehind: event lag every event of the window exceeded"})
    events_stopped_seconds: float = field(default=120.0, metadata={
        "help": "CeleryExporterFallingBehind: no event for this long while workers show up"})
    falling_behind_window: str = field(default="10m", metadata={
        "help": "CeleryExporterFallingBehind: window for lag and dropped/invalid/evicted"})
    falling_behind_for: str = field(default="15m", metadata={
        "help": "CeleryExporterFallingBehind for:"})

    # Incident alerts (alerts/incidents.py); per-task limits in the config file's tasks:.
    max_runtime_seconds: float = field(default=3600.0, metadata={
        "help": "CeleryTaskRunningTooLong: a task running longer than this is stuck; per "
                "task (max_runtime_seconds) in the config file's tasks:"})
    running_too_long_for: str = field(default="1m", metadata={
        "help": "CeleryTaskRunningTooLong for:"})
    interrupted_window: str = field(default="10m", metadata={
        "help": "CeleryTasksInterrupted: keeps firing this long after the last interrupted "
                "task"})
    interrupted_for: str = field(default="30s", metadata={"help": "CeleryTasksInterrupted for:"})
    oldest_waiting_seconds: float = field(default=600.0, metadata={
        "help": "CeleryQueueOldestWaitingHigh: age of the oldest waiting message, seconds"})
    oldest_waiting_for: str = field(default="5m", metadata={
        "help": "CeleryQueueOldestWaitingHigh for:"})
    ghost_after_seconds: float = field(default=600.0, metadata={
        "help": "CeleryWorkerGhost: seconds without a received task while a consumed queue "
                "has a backlog"})
    ghost_for: str = field(default="5m", metadata={"help": "CeleryWorkerGhost for:"})
    periodic_overdue_for: str = field(default="1m", metadata={
        "help": "CeleryPeriodicTaskOverdue for: (per beat entry from the exporter's "
                "celery_periodic_task_overdue; for tasks without a schedule source, intervals "
                "per task as periodic_interval_seconds in the config file's tasks:)"})

    # Only from the config file: {queue: {objective: 0.95, ...}} and {task: {...}}.
    queues: Mapping[str, Mapping[str, float]] = field(default_factory=dict, metadata={
        "file_only": True})
    tasks: Mapping[str, Mapping[str, float]] = field(
        default_factory=lambda: dict(DEFAULT_TASKS), metadata={"file_only": True})

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_for", "_window", "_retention", "_memory")):
                try:
                    seconds(value)
                except ValueError as exc:
                    raise ValueError(f"{_flag(f.name)}: {exc}") from None
            elif isinstance(value, float) and value < 0:
                raise ValueError(f"{_flag(f.name)} must not be negative")
        self._check_objective("--objective", self.objective)
        self._check_ratio("--task-failure-ratio", self.task_failure_ratio)
        self._check_overrides("queues", self.queues, QUEUE_KEYS)
        self._check_overrides("tasks", self.tasks, TASK_KEYS)
        if self.cluster_label and not _LABEL.fullmatch(self.cluster_label):
            raise ValueError(f"--cluster-label: not a label name: {self.cluster_label!r}")
        for label in self.replicas:
            if not _LABEL.fullmatch(label):
                raise ValueError(f"--replica-labels: not a label name: {label!r}")
        if self.prefix and not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", self.prefix):
            raise ValueError(f"--prefix: not a metric name prefix: {self.prefix!r}")
        sel = self.job_selector.strip()
        if sel.startswith("{") or sel.endswith("}"):
            raise ValueError('--job-selector: give matchers without braces, e.g. job="celery"')
        # The worst case from a worker's death to the alert firing is its `for:` plus the
        # heartbeat timeout, one scrape and one evaluation. The alert outlives the
        # exporter's retention through worker_down_memory, which must leave it room.
        detect = HEARTBEAT_TIMEOUT_SECONDS + SCRAPE_INTERVAL_SECONDS + EVALUATION_INTERVAL_SECONDS
        if seconds(self.worker_down_for) + detect > seconds(self.worker_down_memory) / 2:
            raise ValueError(
                f"--worker-down-for {self.worker_down_for} is too long for a worker down "
                f"memory of {self.worker_down_memory}: the alert would fire late or never")

    @staticmethod
    def _check_objective(where: str, value: object) -> None:
        if not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ValueError(f"{where} must be between 0 and 1 (exclusive), got {value!r}")

    @staticmethod
    def _check_ratio(where: str, value: object) -> None:
        if not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(f"{where} must be in [0, 1), got {value!r}")

    def _check_overrides(self, section: str, entries: Mapping[str, Any],
                         allowed: frozenset[str]) -> None:
        if not isinstance(entries, Mapping):
            raise ValueError(f"{section}: expected a mapping of name -> settings")
        for name, settings in entries.items():
            where = f"{section}.{name}"
            if not isinstance(name, str) or not name or not isinstance(settings, Mapping):
                raise ValueError(f"{where}: expected a name and a mapping of settings")
            unknown = set(settings) - allowed
            if unknown:
                raise ValueError(f"{where}: unknown setting(s) {sorted(unknown)}; allowed: "
                                 f"{sorted(allowed)}")
            for key, value in settings.items():
                if key == "objective":
                    self._check_objective(f"{where}.objective", value)
                elif key == "task_failure_ratio":
                    self._check_ratio(f"{where}.task_failure_ratio", value)
                elif key in _POSITIVE_TASK_KEYS:
                    if not isinstance(value, (int, float)) or value <= 0:
                        raise ValueError(f"{where}.{key} must be a number > 0, got {value!r}")
                elif not isinstance(value, (int, float)) or value < 0:
                    raise ValueError(f"{where}.{key} must be a number >= 0, got {value!r}")

    @classmethod
    def from_file(cls, path: Path, **overrides: Any) -> RulesConfig:
        """Settings from a YAML file (keys as the flags, dashes or underscores), then
        `overrides` on top. Errors name the file and the key."""
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"--config {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"--config {path}: expected a mapping of settings")
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise ValueError(f"--config {path}: unknown setting {key!r}")
            default = known[name].default
            if isinstance(default, float) and isinstance(value, int) \
                    and not isinstance(value, bool):
                value = float(value)
            values[name] = value
        try:
            return cls(**{**values, **overrides})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"--config {path}: {exc}") from None

    @property
    def replicas(self) -> tuple[str, ...]:
        return tuple(x.strip() for x in self.replica_labels.split(",") if x.strip())

    @property
    def group_labels(self) -> tuple[str, ...]:
        """Labels every aggregation keeps: one SLO per Celery app (job) and cluster."""
        return (self.cluster_label, "job") if self.cluster_label else ("job",)

    @property
    def level(self) -> str:
        """The `level` part of recording rule names for (group labels, queue)."""
        return "_".join((*self.group_labels, "queue"))

    def per_queue(self, key: str) -> dict[str, float]:
        """{queue: value} for the queues that override `key`."""
        return {q: float(s[key]) for q, s in sorted(self.queues.items()) if key in s}

    def per_task(self, key: str) -> dict[str, float]:
        return {t: float(s[key]) for t, s in sorted(self.tasks.items()) if key in s}

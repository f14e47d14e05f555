"""Incident alerts (issue 12): stuck, interrupted, starving, ghost consumers, missed runs.

One rule group, assembled beside the others in `alerts.rules.build`. Thresholds live in
the one `RulesConfig` (flags or `--config`); per-task expected durations and periodic
intervals come from the config file's `tasks:` section, so one long report does not set the
bar for every task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery_events_exporter import metrics as m
from celery_events_exporter.metrics import Metric

from .config import RulesConfig

GROUP = "celery.incidents"
ALERTS = ("CeleryTaskRunningTooLong", "CeleryTasksInterrupted", "CeleryQueueOldestWaitingHigh",
          "CeleryWorkerGhost", "CeleryPeriodicTaskOverdue")


@dataclass(frozen=True)
class IncidentConfig:
    """The incident thresholds, read from the one `RulesConfig` (flags or `--config`), so
    the dashboards draw the same ones."""

    # A task running longer than this (its name's entry in `task_max_runtime`, else the
    # default) is stuck: holding a lock, a transaction, a pool slot.
    max_runtime_seconds: float
    task_max_runtime: tuple[tuple[str, float], ...]
    running_too_long_for: str
    # Interrupted tasks stay alerting this long after the last one.
    interrupted_window: str
    interrupted_for: str
    oldest_waiting_seconds: float
    oldest_waiting_for: str
    # A live worker that consumes a queue with a backlog and received nothing for this long.
    ghost_after_seconds: float
    ghost_for: str
    # Periodic task name -> the longest normal gap between two publishes (seconds): the
    # fallback for tasks no schedule source (--beat-schedule, --beat-database-url) covers.
    periodic_tasks: tuple[tuple[str, float], ...]
    periodic_overdue_for: str

    @classmethod
    def from_rules(cls, cfg: RulesConfig) -> IncidentConfig:
        # RulesConfig validated every value (durations, positive per-task limits).
        return cls(
            max_runtime_seconds=cfg.max_runtime_seconds,
            task_max_runtime=tuple(cfg.per_task("max_runtime_seconds").items()),
            running_too_long_for=cfg.running_too_long_for,
            interrupted_window=cfg.interrupted_window,
            interrupted_for=cfg.interrupted_for,
            oldest_waiting_seconds=cfg.oldest_waiting_seconds,
            oldest_waiting_for=cfg.oldest_waiting_for,
            ghost_after_seconds=cfg.ghost_after_seconds,
            ghost_for=cfg.ghost_for,
            periodic_tasks=tuple(cfg.per_task("periodic_interval_seconds").items()),
            periodic_overdue_for=cfg.periodic_overdue_for,
        )


def num(value: float) -> str:
    return f"{value:g}"


def _q(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _P:
    def __init__(self, cfg: RulesConfig) -> None:
        self.cfg = cfg
        self.by = ", ".join(cfg.group_labels)

    def m(self, metric: Metric, *extra: str) -> str:
        base = [self.cfg.job_selector.strip()] if self.cfg.job_selector.strip() else []
        return metric.full(self.cfg.prefix) + "{" + ", ".join((*base, *extra)) + "}"

    def g(self, metric: Metric, *extra: str) -> str:
        """A gauge, one replica's value per series."""
        return self.one(self.m(metric, *extra))

    def one(self, expr: str) -> str:
        """One HA replica's value per series, as alerts.rules does: two exporters on one
        broker both report every series, and an alert must fire once."""
        if not self.cfg.replicas:
            return expr
        return f"max without ({', '.join(self.cfg.replicas)}) ({expr})"


def _alert(cfg: RulesConfig, name: str, expr: str, for_: str, severity: str, summary: str,
           description: str) -> dict[str, Any]:
    return {"alert": name, "expr": expr, "for": for_, "labels": {"severity": severity},
            "annotations": {"summary": summary, "description": description,
                            "runbook_url": f"{cfg.runbook_url}#{name.lower()}"}}


def _running_too_long(p: _P, inc: IncidentConfig) -> str:
    age = m.TASK_OLDEST_RUNNING_AGE
    clauses = [f"{p.g(age, f'name={_q(task)}')} > {num(limit)}"
               for task, limit in inc.task_max_runtime]
    others = [f"name!={_q(task)}" for task, _ in inc.task_max_runtime]
    clauses.append(f"{p.g(age, *others)} > {num(inc.max_runtime_seconds)}")
    return "\nor\n".join(clauses) + "\n"


def _ghost(p: _P, inc: IncidentConfig) -> str:
    on_worker = f"on ({p.by}, worker)"
    on_queue = f"on ({p.by}, queue)"
    backlog = (f"max by ({p.by}, worker) (\n"
               f"  {p.g(m.WORKER_QUEUE)}\n"
               f"  * {on_queue} group_left ()\n"
               f"  (max by ({p.by}, queue) ({p.g(m.QUEUE_LENGTH)}) > 0)\n"
               f")")
    return (f"(time() - {p.g(m.WORKER_LAST_RECEIVED)}) > {num(inc.ghost_after_seconds)}\n"
            f"and {on_worker}\n"
            # > 0: with grouped worker labels (host, regex) up counts the group's live nodes.
            f"{p.g(m.WORKER_UP)} > 0\n"
            f"and {on_worker}\n"
            f"{backlog}\n"
            # A worker whose pool runs tasks (long ones holding every slot, with the backlog
            # behind them) receives nothing either: busy, not a ghost. CeleryTaskRunningTooLong
            # and CeleryQueueStuck speak for it.
            f"unless {on_worker}\n"
            f"{p.g(m.WORKER_TASKS_ACTIVE)} > 0\n")


def _overdue(p: _P, inc: IncidentConfig) -> str:
    """Per schedule entry where the exporter reads the schedule (its overdue gauge, valued
    at the seconds past the missed run); else, per configured task name, the dead-man's
    switch on task-sent, for the names no schedule entry covers."""
    on = f"on ({p.by}, entry, name)"
    clauses = [f"(time() - {p.g(m.PERIODIC_NEXT_RUN)})\n"
               f"and {on}\n"
               f"{p.g(m.PERIODIC_OVERDUE)} == 1"]
    covered = f"unless on ({p.by}, name)\n{p.g(m.PERIODIC_OVERDUE)}"
    clauses += [f"(time() - {p.g(m.TASK_LAST_SENT, f'name={_q(task)}')}) > {num(gap)}\n"
                f"{covered}"
                for task, gap in inc.periodic_tasks]
    return "\nor\n".join(clauses) + "\n"


def alerting_rules(cfg: RulesConfig, inc: IncidentConfig) -> list[dict[str, Any]]:
    p = _P(cfg)
    started = (f"sum by ({p.by}, queue) (increase({p.m(m.TASK_STARTED)}[5m])) > 0")
    task = "{{ $labels.name }} on queue {{ $labels.queue }} (job {{ $labels.job }})"
    rules = [
        _alert(cfg, "CeleryTaskRunningTooLong", _running_too_long(p, inc),
               inc.running_too_long_for, "warning",
               "A Celery task has been running longer than expected.",
               f"The oldest running {task} started {{{{ $value | humanizeDuration }}}} ago, "
               f"longer than its expected duration. It may be stuck holding a lock, a "
               f"transaction or a pool slot."),
        _alert(cfg, "CeleryTasksInterrupted",
               p.one(f"increase({p.m(m.TASK_INTERRUPTED)}[{inc.interrupted_window}])") + " > 0\n",
               inc.interrupted_for, "warning",
               "Celery tasks died with their worker.",
               f"{{{{ $value | printf \"%.0f\" }}}} execution(s) of {task} were running "
               f"on {{{{ $labels.worker }}}} when it went down, in the last "
               f"{inc.interrupted_window}. Without acks_late they are lost; with it the "
               f"broker redelivers them."),
        _alert(cfg, "CeleryQueueOldestWaitingHigh",
               f"{p.g(m.QUEUE_OLDEST_WAITING_AGE)} > {num(inc.oldest_waiting_seconds)}\n"
               f"unless on ({p.by}, queue)\n"
               f"{started}\n",
               inc.oldest_waiting_for, "critical",
               "A Celery queue has a message waiting and nothing starts.",
               "The oldest message in queue {{ $labels.queue }} (job {{ $labels.job }}) has "
               "waited {{ $value | humanizeDuration }} and no task of that queue started "
               "in the last 5m."),
        _alert(cfg, "CeleryWorkerGhost", _ghost(p, inc), inc.ghost_for, "warning",
               "A Celery worker heartbeats but no longer consumes.",
               "Worker {{ $labels.worker }} (job {{ $labels.job }}) is up and consumes a "
               "queue with a backlog, but received no task for "
               "{{ $value | humanizeDuration }}."),
    ]
    rules.append(_alert(
        cfg, "CeleryPeriodicTaskOverdue", _overdue(p, inc), inc.periodic_overdue_for,
        "warning", "A periodic Celery task was not sent on time.",
        "{{ if $labels.entry }}Beat entry {{ $labels.entry }} (task {{ $labels.name }}, job "
        "{{ $labels.job }}) should have run {{ $value | humanizeDuration }} ago"
        "{{ else }}Task {{ $labels.name }} (job {{ $labels.job }}) was last sent "
        "{{ $value | humanizeDuration }} ago, longer than its schedule allows{{ end }}: is "
        "celery beat running?"))
    return rules


def group(cfg: RulesConfig) -> dict[str, Any]:
    return {"name": GROUP, "rules": alerting_rules(cfg, IncidentConfig.from_rules(cfg))}

"""What the event state is told by the command line: caps, ages and label policy."""

from __future__ import annotations

from dataclasses import dataclass, field

from celery_events_exporter import metrics as m
from celery_events_exporter.labels import LabelPolicy

# Task ids, node names and task names longer than this are hostile (a uuid is 36 chars, a
# node name `prefix@fqdn` fits in 320): never kept whole, so they cannot pin memory.
MAX_KEY = 320


@dataclass(frozen=True)
class StateConfig:
    max_tasks: int = 100_000
    task_ttl: float = 3600.0
    worker_timeout: float = 0.0  # 0: Celery's rule, twice the worker's heartbeat interval
    worker_down_retention: float = 600.0
    max_series: int = 10_000
    labels: LabelPolicy = field(default_factory=LabelPolicy)
    buckets: dict[str, tuple[float, ...]] = field(default_factory=dict)
    # A new task series is exposed at 0 until a scrape has shown it so and for at least
    # this long (seconds): 0 suits one Prometheus; an HA pair wants its scrape interval.
    new_series_delay: float = 0.0

    def buckets_for(self, metric: m.Metric) -> tuple[float, ...]:
        return self.buckets.get(metric.key) or metric.buckets or ()

"""The event state: pure aggregates from Celery events (see `handlers` for the entry points).

Rooms, imports running one way (handlers -> pending -> tasks, workers -> series, config):
  config    StateConfig and the caps every room shares
  series    counters and histograms keyed by label tuples, capped
  tasks     the in-flight table and the memory of finished tasks
  workers   the worker registry: liveness, buffers, probe facts
  clocks    per-host clock offsets
  pending   observations held until task-sent names the queue
  handlers  State: one handler per event type, the only room that knows them all
"""

from celery_events_exporter.state.clocks import OFFSET_WINDOW_SECONDS
from celery_events_exporter.state.config import StateConfig
from celery_events_exporter.state.handlers import EVENT_REASONS, State
from celery_events_exporter.state.pending import PENDING_GRACE, SENT_MEMORY
from celery_events_exporter.state.series import Series
from celery_events_exporter.state.tasks import Task, parse_eta
from celery_events_exporter.state.workers import Worker, apply_worker_probe

__all__ = ["EVENT_REASONS", "OFFSET_WINDOW_SECONDS", "PENDING_GRACE", "SENT_MEMORY", "Series",
           "State", "StateConfig", "Task", "Worker", "apply_worker_probe", "parse_eta"]

"""Periodic tasks: the beat schedule, read on the probe timer, per entry last/next run.

Nothing here runs per event. The event path already keeps, per task name, when a task was
last sent (`State.last_sent`); the `BeatProbe` reads the schedule sources (a Python module's
dict, django-celery-beat's tables), joins them with that map and publishes one row per
entry for the collector.

- `schedules`: the entries and the next-run arithmetic (Celery's own `celery.schedules`).
- `sources`: where entries come from, with the flags' validation.
- `probe`: the probe that reads them and computes the rows.
"""

from celery_events_exporter.beat.schedules import Entry, PeriodicFacts, PeriodicRow

__all__ = ["Entry", "PeriodicFacts", "PeriodicRow"]

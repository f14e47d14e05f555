"""Schedule entries and their next run, by Celery's own schedule arithmetic.

Celery is a runtime dependency of the exporter already, so `celery.schedules.schedule` and
`crontab` compute the next run exactly as beat does (day-of-month, day-of-week, DST in the
schedule's timezone) instead of a second implementation drifting from it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import lru_cache

from celery import Celery
from celery.schedules import BaseSchedule, crontab, schedule

UTC = dt.UTC
# A task-sent seen up to this long (at most the grace) before a crontab boundary counts for
# that boundary: beat's clock may run a little ahead of the exporter's, and a crontab's next
# run counted from just before its boundary would be that very boundary, overdue at once.
CRONTAB_SKEW = 5.0


# Why an entry is not exported (celery_exporter_periodic_entries_skipped{reason}).
SKIP_REASONS = ("over_cap", "unsupported", "invalid", "excluded")


class UnsupportedSchedule(ValueError):
    """A schedule type the exporter cannot compute (solar, clocked, custom classes)."""


@dataclass(frozen=True)
class Entry:
    name: str  # the schedule's key; django-celery-beat: PeriodicTask.name
    task: str
    schedule: BaseSchedule  # an interval `schedule` or a `crontab`, bound to its timezone
    last_run: float | None = None  # the source's own record (last_run_at), wall seconds
    not_before: float | None = None  # django-celery-beat start_time


@dataclass(frozen=True, slots=True)
class PeriodicRow:
    entry: str
    name: str
    last_run: float | None
    next_run: float
    overdue: bool


@dataclass
class PeriodicFacts:
    """One schedule read's view, replaced wholesale (see ProbeResults)."""

    rows: list[PeriodicRow] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)


@lru_cache(maxsize=64)
def schedule_app(timezone: str = "UTC") -> Celery:
    """A private app that only carries a timezone for the schedules: never the current app,
    so the user's or Celery's default app configuration cannot leak into the arithmetic."""
    app = Celery("celery-events-exporter-beat", set_as_current=False)
    app.conf.timezone = timezone
    app.conf.enable_utc = True
    _ = app.timezone  # an unknown zone fails here, where the caller can name the source
    return app


def bind(value: object, app: Celery) -> BaseSchedule:
    """A beat schedule value as Celery accepts it (seconds, a timedelta, a `schedule` or a
    `crontab`), copied onto `app`; anything else raises UnsupportedSchedule."""
    if isinstance(value, bool):
        raise UnsupportedSchedule("a boolean is not a schedule")
    if isinstance(value, (int, float)):
        value = dt.timedelta(seconds=value)
    if isinstance(value, dt.timedelta):
        if value.total_seconds() <= 0:
            raise UnsupportedSchedule(f"interval {value} is not positive")
        return schedule(value, app=app)
    if type(value) is schedule:
        if value.run_every.total_seconds() <= 0:
            raise UnsupportedSchedule(f"interval {value.run_every} is not positive")
        return schedule(value.run_every, relative=value.relative, app=app)
    if isinstance(value, crontab):
        return crontab(minute=value._orig_minute, hour=value._orig_hour,
                       day_of_week=value._orig_day_of_week,
                       day_of_month=value._orig_day_of_month,
                       month_of_year=value._orig_month_of_year, app=app)
    raise UnsupportedSchedule(f"{type(value).__name__} schedules are not supported "
                              f"(interval and crontab are)")


def next_run(sched: BaseSchedule, reference: float, now: float) -> float:
    """When `sched` is next due after a run at `reference` (wall seconds), as beat computes
    it: `remaining_estimate` is the time from `now` to that due time."""
    now_dt = dt.datetime.fromtimestamp(now, UTC)
    sched.nowfun = lambda: now_dt  # our own copy (see bind), used by one thread
    remaining = sched.remaining_estimate(dt.datetime.fromtimestamp(reference, UTC))
    return now + remaining.total_seconds()


def evaluate(entry: Entry, label: str, sent: float | None, first_seen: float, now: float,
             grace: float) -> PeriodicRow:
    """The entry's row: last run (the later of its task's last task-sent and the source's
    record), next run from it (before any: from when the exporter first saw the entry),
    overdue past grace."""
    known = max((t for t in (sent, entry.last_run) if t is not None), default=None)
    reference = first_seen if known is None else known
    if known is not None and isinstance(entry.schedule, crontab):
        reference += min(grace, CRONTAB_SKEW)
    due = next_run(entry.schedule, reference, now)
    if entry.not_before is not None and due < entry.not_before:
        due = entry.not_before
    return PeriodicRow(entry.name, label, known, due, now > due + grace)

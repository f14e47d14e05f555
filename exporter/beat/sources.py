"""Where beat schedule entries come from: a Python module, django-celery-beat's tables.

Both keep the exporter free of Django and of database drivers it does not need:

- `ModuleSource` (`--beat-schedule MODULE[:ATTR]`) imports a module and reads a dict
  from it, the way `--django-settings` reads the broker: a Django settings module's
  `CELERY_BEAT_SCHEDULE` imports without `django.setup()` (its values are Celery's own
  `crontab`/`timedelta`). ATTR may also name a Celery app (its `conf.beat_schedule`), which
  needs whatever that app's module imports.
- `DatabaseSource` (`--beat-database-url`) reads django-celery-beat's tables with plain
  SQL, read-only: SQLite with the standard library, PostgreSQL with psycopg when it is
  installed (the flag says so when it is not). Django's ORM is not needed to read three
  tables, and an exporter must never write to the application's database.

A bad flag is a ConfigError at start-up; a database that fails later raises from `read`,
which the probe counts and survives.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import importlib.machinery
import os
import sqlite3
import sys
from collections.abc import Mapping
from types import ModuleType
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from celery.schedules import ParseException, crontab

from celery_events_exporter.beat.schedules import (
    UTC,
    Entry,
    UnsupportedSchedule,
    bind,
    schedule_app,
)
from celery_events_exporter.config import ConfigError, redact_url

SCHEDULE_FLAG = "--beat-schedule"
DATABASE_FLAG = "--beat-database-url"
DEFAULT_ATTRS = ("CELERY_BEAT_SCHEDULE", "beat_schedule")
_POSTGRES = frozenset({"postgres", "postgresql", "pgsql"})
# django-celery-beat's IntervalSchedule.period choices.
_PERIODS = frozenset({"days", "hours", "minutes", "seconds", "microseconds"})

Read = tuple[list[Entry], dict[str, int]]  # entries, skipped by reason


class Source(Protocol):
    precedence: int  # where two sources name the same entry, the lower wins

    def describe(self) -> str: ...

    def read(self, limit: int, timeout: float) -> Read: ...


# --- a Python module ---------------------------------------------------------------------


class ModuleSource:
    """Entries of a dict in an importable module, resolved once at start-up: a deploy that
    changes the schedule restarts beat, and the exporter with it."""

    precedence = 1

    def __init__(self, spec: str) -> None:
        self.spec = spec
        schedule, timezone = _resolve(spec)
        try:
            app = schedule_app(timezone)
        except Exception as exc:  # an unknown zone name, from the user's module
            raise ConfigError(f"{SCHEDULE_FLAG}: {spec}: timezone {timezone!r}: {exc}") from None
        self.entries: list[Entry] = []
        self.skipped: dict[str, int] = {}
        for name, item in schedule.items():
            if not isinstance(item, Mapping) or not isinstance(item.get("task"), str) \
                    or "schedule" not in item:
                raise ConfigError(f"{SCHEDULE_FLAG}: {spec}: entry {name!r} is not a mapping "
                                  f"with `task` (a name) and `schedule`")
            try:
                self.entries.append(Entry(str(name), item["task"], bind(item["schedule"], app)))
            except UnsupportedSchedule:
                self.skipped["unsupported"] = self.skipped.get("unsupported", 0) + 1

    def describe(self) -> str:
        return f"{SCHEDULE_FLAG} {self.spec}"

    def read(self, limit: int, timeout: float) -> Read:
        return self.entries, dict(self.skipped)


def _resolve(spec: str) -> tuple[Mapping[str, Any], str]:
    """(schedule dict, timezone name) named by MODULE[:ATTR]."""
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise ConfigError(f"{SCHEDULE_FLAG}: {spec!r} is not MODULE[:ATTR]")
    # As --django-settings: the project's modules import from the working directory (for
    # this import only: the schedule is read once, at start).
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        module = import_leaf(module_name)
    except Exception as exc:  # any import-time error in user code is a config problem
        raise ConfigError(f"{SCHEDULE_FLAG}: cannot import {module_name!r}: "
                          f"{type(exc).__name__}: {exc}") from None
    finally:
        if added:
            sys.path.remove(here)
    names = (attr,) if attr else DEFAULT_ATTRS
    found = next((n for n in names if hasattr(module, n)), None)
    if found is None:
        raise ConfigError(f"{SCHEDULE_FLAG}: {module_name} has no {' or '.join(names)}")
    value = getattr(module, found)
    conf = getattr(value, "conf", None)
    if conf is not None and not isinstance(value, Mapping):  # a Celery app
        return dict(conf.beat_schedule or {}), str(conf.timezone or "UTC")
    if not isinstance(value, Mapping):
        raise ConfigError(f"{SCHEDULE_FLAG}: {module_name}.{found} is a "
                          f"{type(value).__name__}, not a schedule dict or a Celery app")
    # The timezone beside it, as Celery reads it: CELERY_TIMEZONE (Django namespace) next to
    # CELERY_BEAT_SCHEDULE, `timezone` next to `beat_schedule`.
    zone_attr = found[: -len("BEAT_SCHEDULE")] + "TIMEZONE" if found.endswith(
        "BEAT_SCHEDULE") else "timezone" if found == "beat_schedule" else None
    zone = getattr(module, zone_attr, None) if zone_attr else None
    return value, str(zone or "UTC")


def import_leaf(name: str) -> ModuleType:
    """Import `pkg.settings` without running `pkg/__init__.py` (nor any parent's).

    A Django project's package `__init__` imports its Celery app (the pattern Celery
    documents), which imports Django and configures it: an exporter without Django could not
    import the settings, and one with Django would start the project's app. Parents not yet
    imported are stood in for by empty packages with their real `__path__` while the module
    (and the siblings it imports) load, and removed afterwards with what loaded under them.
    """
    parts = name.split(".")
    stubs: list[str] = []
    before = set(sys.modules)
    try:
        for i in range(1, len(parts)):
            package = ".".join(parts[:i])
            if package in sys.modules:
                continue
            parent = sys.modules[".".join(parts[: i - 1])].__path__ if i > 1 else None
            spec = importlib.machinery.PathFinder.find_spec(package, parent)
            if spec is None or spec.submodule_search_locations is None:
                raise ModuleNotFoundError(f"No module named {package!r}", name=package)
            stub = ModuleType(package)
            stub.__path__ = list(spec.submodule_search_locations)
            stub.__spec__ = spec
            sys.modules[package] = stub
            stubs.append(package)
        return importlib.import_module(name)
    finally:
        # What loaded under a stand-in goes too: a later real import of the package (the
        # exporter never makes one) must run its __init__ and load its own submodules.
        prefixes = tuple(f"{package}." for package in stubs)
        for loaded in set(sys.modules) - before:
            if loaded in stubs or loaded.startswith(prefixes):
                sys.modules.pop(loaded, None)


# --- django-celery-beat's tables ---------------------------------------------------------

_QUERY = """
SELECT t.name, t.task, t.last_run_at, t.start_time, t.expires, t.one_off, t.total_run_count,
       i.every, i.period,
       c.minute, c.hour, c.day_of_week, c.day_of_month, c.month_of_year, c.timezone
FROM django_celery_beat_periodictask t
LEFT JOIN django_celery_beat_intervalschedule i ON i.id = t.interval_id
LEFT JOIN django_celery_beat_crontabschedule c ON c.id = t.crontab_id
WHERE t.enabled
ORDER BY t.name
LIMIT {limit}
"""
_COUNT = "SELECT COUNT(*) FROM django_celery_beat_periodictask t WHERE t.enabled"


class DatabaseSource:
    """django-celery-beat's PeriodicTask rows with their interval or crontab, read with a
    new read-only connection per read (one every probe interval).

    It wins over a module: django-celery-beat's DatabaseScheduler copies the settings'
    entries into its tables, and what beat runs is the row, edits in the admin included.
    """

    precedence = 0

    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme == "sqlite":
            # sqlite:///relative/path, sqlite:////absolute/path (as Django's DATABASE_URL).
            self.path = parts.path[1:] if parts.path.startswith("/") else parts.path
            if not self.path or parts.netloc:
                raise ConfigError(f"{DATABASE_FLAG}: {url!r}: want sqlite:///relative/path "
                                  f"or sqlite:////absolute/path")
            self.kind = "sqlite"
        elif scheme in _POSTGRES:
            try:
                import psycopg  # noqa: F401  (optional: only this source needs it)
            except ImportError:
                raise ConfigError(f"{DATABASE_FLAG}: reading PostgreSQL needs psycopg, which "
                                  f"is not installed: pip install 'psycopg[binary]'") from None
            self.kind = "postgresql"
        else:
            raise ConfigError(f"{DATABASE_FLAG}: {redact_url(url)!r}: scheme {scheme!r} is "
                              f"not supported (sqlite:/// or postgresql://)")

    def describe(self) -> str:
        return f"{DATABASE_FLAG} {redact_url(self.url)}"

    def _connect(self, timeout: float) -> Any:
        if self.kind == "sqlite":
            # mode=ro: the connection cannot write, whatever runs on it.
            return sqlite3.connect(f"file:{quote(self.path)}?mode=ro", uri=True,
                                   timeout=timeout)
        import psycopg

        # A read-only session with a statement timeout: a locked table cannot hang the read.
        return psycopg.connect(self.url, connect_timeout=max(1, round(timeout)),
                               autocommit=True,
                               options=f"-c default_transaction_read_only=on "
                                       f"-c statement_timeout={round(timeout * 1000)}")

    def read(self, limit: int, timeout: float) -> Read:
        with contextlib.closing(self._connect(timeout)) as conn:
            cursor = conn.cursor()
            cursor.execute(_COUNT)
            total = int(cursor.fetchone()[0])
            cursor.execute(_QUERY.format(limit=int(limit)))
            rows = cursor.fetchall()
        entries, skipped = rows_to_entries(rows, dt.datetime.now(UTC))
        if total > len(rows):
            skipped["over_cap"] = total - len(rows)
        return entries, skipped


def rows_to_entries(rows: list[tuple], now: dt.datetime) -> Read:
    entries: list[Entry] = []
    skipped: dict[str, int] = {}

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    for (name, task, last_run_at, start_time, expires, one_off, runs, every, period,
         minute, hour, dow, dom, moy, zone) in rows:
        expired = expires is not None and _when(expires) <= now.timestamp()
        if expired or (one_off and runs):  # beat will not run it again
            continue
        try:
            if every is not None and period in _PERIODS:
                sched = bind(dt.timedelta(**{period: every}), schedule_app())
            elif minute is not None:
                sched = crontab(minute=minute, hour=hour, day_of_week=dow,
                                day_of_month=dom, month_of_year=moy,
                                app=schedule_app(str(zone or "UTC")))
            else:  # solar, clocked: not computed here
                skip("unsupported")
                continue
        except (UnsupportedSchedule, ParseException, ValueError, LookupError):
            skip("invalid")  # an interval <= 0, a crontab field or zone beat cannot use
            continue
        entries.append(Entry(str(name), str(task), sched, _when(last_run_at),
                             _when(start_time)))
    return entries, skipped


def _when(value: object) -> float | None:
    """A timestamp column as wall seconds: datetimes from psycopg, ISO text from SQLite;
    naive values are UTC (Django stores UTC with USE_TZ, its default)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()

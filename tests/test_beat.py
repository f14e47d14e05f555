"""Periodic tasks (exporter/beat): schedule sources, next-run arithmetic, the probe's rows,
the flags. A real django-celery-beat database (made by its own migrations) stands behind
the table reader; tests/integration/test_beat.py has the proof with a real `celery beat`."""

from __future__ import annotations

import datetime as dt
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from celery.schedules import BaseSchedule, crontab, schedule

from celery_events_exporter.beat.probe import BeatProbe, ScheduleReadError
from celery_events_exporter.beat.schedules import (
    CRONTAB_SKEW,
    Entry,
    PeriodicFacts,
    bind,
    evaluate,
    next_run,
    schedule_app,
)
from celery_events_exporter.beat.sources import DatabaseSource, ModuleSource, Read
from celery_events_exporter.cli import build_parser, config_from_args, main
from celery_events_exporter.config import ConfigError
from celery_events_exporter.labels import LabelPolicy
from celery_events_exporter.pipeline import Pipeline
from celery_events_exporter.probes import ProbeResults, ProbeRunner
from celery_events_exporter.state import State
from tests.test_collector import registry_for
from tests.test_state import T0, feed, lifecycle

UTC = dt.UTC


def near(value: float) -> object:
    """Timestamps are 1.7e9: pytest.approx's relative default would allow half an hour."""
    return pytest.approx(value, abs=1e-3)


def at(*args: int, tz: str = "UTC") -> float:
    from zoneinfo import ZoneInfo

    return dt.datetime(*args, tzinfo=ZoneInfo(tz)).timestamp()  # type: ignore[misc]


# -- next run: Celery's arithmetic, in the schedule's timezone --------------------------------

def test_interval_next_run_is_the_last_run_plus_the_interval() -> None:
    sched = bind(dt.timedelta(seconds=30), schedule_app())
    assert next_run(sched, T0, T0 + 1) == near(T0 + 30)
    assert next_run(bind(7.5, schedule_app()), T0, T0 + 100) == near(T0 + 7.5)


def test_crontab_next_run_is_the_next_matching_minute() -> None:
    sched = bind(crontab(minute="*/5"), schedule_app())
    assert next_run(sched, at(2026, 3, 2, 10, 2, 10), at(2026, 3, 2, 10, 3)) == \
        at(2026, 3, 2, 10, 5)


def test_crontab_runs_in_the_schedules_timezone_across_dst() -> None:
    """03:00 in Berlin is 02:00 UTC in winter and 01:00 UTC in summer."""
    sched = bind(crontab(minute=0, hour=3), schedule_app("Europe/Berlin"))
    winter = next_run(sched, at(2026, 1, 10, 12), at(2026, 1, 10, 12))
    assert winter == at(2026, 1, 11, 2)
    summer = next_run(sched, at(2026, 7, 10, 12), at(2026, 7, 10, 12))
    assert summer == at(2026, 7, 11, 1)


def test_bind_copies_the_users_schedule_and_refuses_what_it_cannot_compute() -> None:
    theirs = crontab(minute="15", hour="*/2")
    ours = bind(theirs, schedule_app())
    assert ours is not theirs and ours == theirs
    assert bind(schedule(dt.timedelta(minutes=1)), schedule_app()).run_every == \
        dt.timedelta(minutes=1)
    # A custom schedule class (as solar, which needs ephem): its arithmetic is its own.
    for bad in (BaseSchedule(), 0, -1, True, "every minute"):
        with pytest.raises(ValueError):
            bind(bad, schedule_app())


# -- one entry's row --------------------------------------------------------------------------

EVERY_30 = Entry("sweep", "app.sweep", bind(30, schedule_app()))


def test_row_runs_from_the_last_task_sent_and_turns_overdue_past_the_grace() -> None:
    row = evaluate(EVERY_30, "app.sweep", T0, T0 - 500, T0 + 40, grace=10)
    assert (row.last_run, row.next_run, row.overdue) == (T0, near(T0 + 30), False)
    assert evaluate(EVERY_30, "app.sweep", T0, T0 - 500, T0 + 40.5, grace=10).overdue


def test_row_takes_the_later_of_task_sent_and_the_sources_last_run() -> None:
    entry = Entry("sweep", "app.sweep", EVERY_30.schedule, last_run=T0 + 20)
    assert evaluate(entry, "app.sweep", T0, T0, T0 + 21, 10).last_run == T0 + 20
    assert evaluate(entry, "app.sweep", T0 + 25, T0, T0 + 26, 10).last_run == T0 + 25
    assert evaluate(entry, "app.sweep", None, T0, T0 + 21, 10).next_run == \
        near(T0 + 50)


def test_row_without_any_run_counts_from_the_exporters_start() -> None:
    row = evaluate(EVERY_30, "app.sweep", None, T0, T0 + 5, grace=10)
    assert row.last_run is None and row.next_run == near(T0 + 30)
    assert evaluate(EVERY_30, "app.sweep", None, T0, T0 + 41, grace=10).overdue


def test_crontab_run_seen_just_before_its_boundary_counts_for_that_boundary() -> None:
    """Beat's clock 1 s ahead: the 10:05 run reaches us at 10:04:59. Its next run is 10:10,
    not the 10:05 boundary (which would be overdue at once)."""
    entry = Entry("report", "app.report", bind(crontab(minute="*/5"), schedule_app()))
    seen = at(2026, 3, 2, 10, 4, 59)
    row = evaluate(entry, "app.report", seen, T0, seen + 70, grace=60)
    assert row.next_run == at(2026, 3, 2, 10, 10) and not row.overdue
    assert CRONTAB_SKEW < 60  # a real miss still shows: the tolerance is seconds, not a slot


def test_not_before_holds_the_next_run_until_the_start_time() -> None:
    entry = Entry("later", "app.later", EVERY_30.schedule, not_before=T0 + 3600)
    assert evaluate(entry, "app.later", None, T0, T0 + 100, 10).next_run == T0 + 3600


# -- the module source ----------------------------------------------------------------------

def write_project(root: Path, settings: str) -> None:
    """A Django-style project whose package __init__ needs Django (as proj/ does): the
    exporter must read the settings without running it."""
    package = root / "fakeproj"
    package.mkdir()
    (package / "__init__.py").write_text("import django_is_not_installed_here  # noqa\n")
    (package / "helpers.py").write_text("EVERY = 45\n")
    (package / "settings.py").write_text(textwrap.dedent(settings))


SETTINGS = """
    from datetime import timedelta
    from celery.schedules import BaseSchedule, crontab
    from fakeproj.helpers import EVERY

    CELERY_TIMEZONE = "Europe/Berlin"
    CELERY_BEAT_SCHEDULE = {
        "sweep": {"task": "app.sweep", "schedule": timedelta(seconds=EVERY)},
        "nightly": {"task": "app.nightly", "schedule": crontab(minute=0, hour=3)},
        "custom": {"task": "app.custom", "schedule": BaseSchedule()},
    }
"""


def test_module_source_reads_django_settings_without_the_package_init(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_project(tmp_path, SETTINGS)
    monkeypatch.chdir(tmp_path)
    source = ModuleSource("fakeproj.settings")
    entries, skipped = source.read(100, 1.0)
    assert [(e.name, e.task) for e in entries] == [("sweep", "app.sweep"),
                                                  ("nightly", "app.nightly")]
    assert skipped == {"unsupported": 1}
    assert entries[0].schedule.run_every == dt.timedelta(seconds=45)
    # CELERY_TIMEZONE beside the schedule: 03:00 Berlin in January is 02:00 UTC.
    assert next_run(entries[1].schedule, at(2026, 1, 10, 12), at(2026, 1, 10, 12)) == \
        at(2026, 1, 11, 2)
    assert not [m for m in sys.modules if m.startswith("fakeproj")], "no stand-in is left"


def test_module_source_reads_a_celery_apps_beat_schedule(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "beatapp.py").write_text(textwrap.dedent("""
        from celery import Celery
        app = Celery("beatapp", set_as_current=False)
        app.conf.beat_schedule = {"tick": {"task": "app.tick", "schedule": 5.0}}
    """))
    monkeypatch.chdir(tmp_path)
    entries, _ = ModuleSource("beatapp:app").read(100, 1.0)
    assert [(e.name, e.task, e.schedule.run_every.total_seconds()) for e in entries] == \
        [("tick", "app.tick", 5.0)]


@pytest.mark.parametrize(("spec", "settings", "message"), [
    ("no_such_module_here", None, "cannot import 'no_such_module_here'"),
    ("fakeproj.settings:NOPE", SETTINGS, "has no NOPE"),
    ("fakeproj.settings:CELERY_TIMEZONE", SETTINGS, "not a schedule dict"),
    ("fakeproj.settings", "CELERY_BEAT_SCHEDULE = {'x': {'schedule': 5}}\n", "entry 'x'"),
    ("fakeproj.settings", "CELERY_TIMEZONE = 'Mars/Olympus'\nCELERY_BEAT_SCHEDULE = {}\n",
     "timezone 'Mars/Olympus'"),
])
def test_module_source_errors_name_the_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            spec: str, settings: str | None,
                                            message: str) -> None:
    if settings is not None:
        write_project(tmp_path, settings)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="--beat-schedule") as info:
        ModuleSource(spec)
    assert message in str(info.value)


# -- django-celery-beat's tables ---------------------------------------------------------------

MAKE_DB = """
import sys
from datetime import datetime, timedelta, timezone

import django
from django.conf import settings

settings.configure(INSTALLED_APPS=["django_celery_beat"], USE_TZ=True, TIME_ZONE="UTC",
                   DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                                          "NAME": sys.argv[1]}})
django.setup()
from django.core.management import call_command

call_command("migrate", verbosity=0)
from django_celery_beat.models import (CrontabSchedule, IntervalSchedule, PeriodicTask,
                                       SolarSchedule)

T0 = datetime.fromtimestamp(float(sys.argv[2]), timezone.utc)
every10 = IntervalSchedule.objects.create(every=10, period=IntervalSchedule.SECONDS)
berlin = CrontabSchedule.objects.create(minute="0", hour="3", timezone="Europe/Berlin")
dawn = SolarSchedule.objects.create(event="sunrise", latitude=52.5, longitude=13.4)
PeriodicTask.objects.create(name="sweep", task="app.sweep", interval=every10, last_run_at=T0)
PeriodicTask.objects.create(name="nightly", task="app.nightly", crontab=berlin)
PeriodicTask.objects.create(name="later", task="app.later", interval=every10,
                            start_time=T0 + timedelta(hours=1))
PeriodicTask.objects.create(name="paused", task="app.paused", interval=every10, enabled=False)
PeriodicTask.objects.create(name="once-done", task="app.once", interval=every10, one_off=True,
                            total_run_count=1)
PeriodicTask.objects.create(name="expired", task="app.old", interval=every10,
                            expires=datetime(2020, 1, 1, tzinfo=timezone.utc))
PeriodicTask.objects.create(name="dawn", task="app.dawn", solar=dawn)
"""


@pytest.fixture(scope="module")
def beat_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("django_celery_beat", reason="the dev extra installs it")
    path = tmp_path_factory.mktemp("beatdb") / "beat.sqlite3"
    subprocess.run([sys.executable, "-c", MAKE_DB, str(path), str(T0)], check=True,
                   timeout=120, capture_output=True)
    return path


def test_database_source_reads_django_celery_beat_tables(beat_db: Path) -> None:
    entries, skipped = DatabaseSource(f"sqlite:///{beat_db}").read(100, 2.0)
    by_name = {e.name: e for e in entries}
    # Disabled, expired and spent one-off entries are not beat's any more; solar is counted.
    assert sorted(by_name) == ["later", "nightly", "sweep"]
    assert skipped == {"unsupported": 1}
    sweep = by_name["sweep"]
    assert (sweep.task, sweep.last_run) == ("app.sweep", T0)
    assert next_run(sweep.schedule, T0, T0 + 1) == near(T0 + 10)
    assert by_name["later"].not_before == T0 + 3600
    # The crontab row's own timezone: 03:00 Berlin in winter is 02:00 UTC.
    assert next_run(by_name["nightly"].schedule, at(2026, 1, 10, 12), at(2026, 1, 10, 12)) \
        == at(2026, 1, 11, 2)


def test_database_source_caps_the_rows_it_reads_and_counts_the_rest(beat_db: Path) -> None:
    # Enabled rows by name: dawn, expired, later, nightly, once-done, sweep; two are read.
    entries, skipped = DatabaseSource(f"sqlite:///{beat_db}").read(2, 2.0)
    assert entries == [] and skipped == {"unsupported": 1, "over_cap": 4}


def test_database_source_connection_cannot_write(beat_db: Path) -> None:
    conn = DatabaseSource(f"sqlite:///{beat_db}")._connect(2.0)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("DELETE FROM django_celery_beat_periodictask")
    finally:
        conn.close()


@pytest.mark.parametrize(("url", "message"), [
    ("mysql://u@h/db", "scheme 'mysql' is not supported"),
    ("sqlite://", "want sqlite:///"),
    ("sqlite://host/x.db", "want sqlite:///"),
])
def test_database_flag_errors_name_the_flag(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match="--beat-database-url") as info:
        DatabaseSource(url)
    assert message in str(info.value)


# -- the probe: sources joined with task-sent, failures survived --------------------------------

class FlakySource:
    precedence = 1

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries
        self.fail = False

    def describe(self) -> str:
        return "flaky"

    def read(self, limit: int, timeout: float) -> Read:
        if self.fail:
            raise sqlite3.OperationalError("database is locked")
        return self.entries, {}


def probe_for(state: State, *sources: object, clock: list[float], max_entries: int = 100,
              policy: LabelPolicy | None = None) -> tuple[BeatProbe, ProbeResults, Pipeline]:
    pipeline = Pipeline(state)
    probe = BeatProbe(sources, pipeline, policy or LabelPolicy(), 1.0, 1.0, grace=10,  # type: ignore[arg-type]
                      max_entries=max_entries, clock=lambda: clock[0])
    return probe, ProbeResults(), pipeline


def test_probe_joins_the_schedule_with_task_sent_and_the_scrape_shows_it() -> None:
    state = State()
    clock = [T0]
    nightly = Entry("nightly", "app.nightly", bind(crontab(minute=0, hour=3), schedule_app()))
    probe, results, pipeline = probe_for(state, FlakySource([EVERY_30, nightly]), clock=clock)
    feed(state, lifecycle("a", T0 + 5, name="app.sweep"))  # task-sent received at T0 + 5
    clock[0] = T0 + 6
    probe.run(results)
    get = registry_for(pipeline, results).get_sample_value
    sweep = {"entry": "sweep", "name": "app.sweep"}
    assert get("celery_periodic_task_last_run_timestamp_seconds", sweep) == T0 + 5
    assert get("celery_periodic_task_next_run_timestamp_seconds", sweep) == \
        near(T0 + 35)
    assert get("celery_periodic_task_overdue", sweep) == 0
    never = {"entry": "nightly", "name": "app.nightly"}
    assert get("celery_periodic_task_last_run_timestamp_seconds", never) is None
    assert get("celery_periodic_task_overdue", never) == 0
    # Every skip reason shows, 0 included (a dashboard's "none", not "no data").
    assert get("celery_exporter_periodic_entries_skipped", {"reason": "over_cap"}) == 0
    assert get("celery_exporter_periodic_entries_skipped", {"reason": "unsupported"}) == 0

    clock[0] = T0 + 46  # 35 + grace 10 passed without a send
    probe.run(results)
    assert registry_for(pipeline, results).get_sample_value(
        "celery_periodic_task_overdue", sweep) == 1


def test_an_entry_added_later_counts_from_when_it_was_first_read() -> None:
    """A PeriodicTask added in the admin a day after the exporter started is not overdue
    at once: before its first run, its reference is when the exporter first read it."""
    clock = [T0]
    source = FlakySource([])
    probe, results, _ = probe_for(State(), source, clock=clock)
    probe.run(results)
    source.entries = [EVERY_30]
    clock[0] = T0 + 86_400
    probe.run(results)
    assert results.periodic is not None
    (row,) = results.periodic.rows
    assert (row.next_run, row.overdue) == (near(T0 + 86_430), False)
    clock[0] = T0 + 86_441
    probe.run(results)
    assert results.periodic.rows[0].overdue


def test_probe_survives_a_failing_source_with_its_last_good_read() -> None:
    state = State()
    clock = [T0]
    source = FlakySource([EVERY_30])
    probe, results, _ = probe_for(state, source, clock=clock)
    runner = ProbeRunner([probe], results)
    runner.run_once(probe)
    source.fail = True
    clock[0] = T0 + 41
    runner.run_once(probe)
    status = results.status["beat"]
    assert (status.success, status.errors) == (False, 1)
    assert "database is locked" in status.last_error
    assert results.periodic is not None
    assert [(r.entry, r.overdue) for r in results.periodic.rows] == [("sweep", True)]
    with pytest.raises(ScheduleReadError):
        probe.run(results)


def test_probe_caps_entries_and_skips_filtered_task_names() -> None:
    entries = [Entry(f"e{i}", f"app.t{i}", EVERY_30.schedule) for i in range(5)]
    clock = [T0]
    probe, results, _ = probe_for(State(), FlakySource(entries), clock=clock, max_entries=3,
                                  policy=LabelPolicy(exclude_tasks=("app.t1",)))
    probe.run(results)
    assert isinstance(results.periodic, PeriodicFacts)
    assert [r.entry for r in results.periodic.rows] == ["e0", "e2"]
    assert results.periodic.skipped == {"over_cap": 2, "excluded": 1}


def test_database_entries_win_over_the_module_entries_of_the_same_name() -> None:
    db = FlakySource([Entry("sweep", "app.sweep", bind(60, schedule_app()))])
    db.precedence = 0
    module = FlakySource([EVERY_30])
    clock = [T0]
    probe, results, _ = probe_for(State(), module, db, clock=clock)
    probe.run(results)
    assert results.periodic is not None
    assert [r.next_run for r in results.periodic.rows] == [near(T0 + 60)]


def test_no_schedule_source_no_periodic_families() -> None:
    state = State()
    text = "\n".join(str(m.name) for m in registry_for(Pipeline(state), ProbeResults()).collect())
    assert "periodic_task" not in text


# -- flags ----------------------------------------------------------------------------------

def test_bad_beat_flags_exit_non_zero_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--broker-url", "redis://127.0.0.1:1/0"]
    for extra, flag in ((["--beat-schedule", "no_such_module_here"], "--beat-schedule"),
                        (["--beat-database-url", "oracle://x/y"], "--beat-database-url"),
                        (["--beat-schedule", "celery.schedules:crontab",
                          "--beat-grace", "-1"], "--beat-grace"),
                        (["--beat-database-url", "sqlite:///x", "--beat-max-entries", "0"],
                         "--beat-max-entries"),
                        (["--beat-database-url", "sqlite:///x", "--probe-interval", "0"],
                         "--probe-interval")):
        with pytest.raises(SystemExit) as info:
            main([*base, *extra])
        assert info.value.code == 2
        assert flag in capsys.readouterr().err


def test_beat_flags_build_sources_in_the_config(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    write_project(tmp_path, SETTINGS)
    monkeypatch.chdir(tmp_path)
    config = config_from_args(build_parser().parse_args([
        "--broker-url", "redis://127.0.0.1:1/0", "--beat-schedule", "fakeproj.settings",
        "--beat-database-url", f"sqlite:///{tmp_path}/later.sqlite3", "--beat-grace", "5"]))
    assert [type(s).__name__ for s in config.beat_sources] == ["ModuleSource",
                                                               "DatabaseSource"]
    assert config.beat_grace == 5
    assert config_from_args(build_parser().parse_args(
        ["--broker-url", "redis://127.0.0.1:1/0"])).beat_sources == ()

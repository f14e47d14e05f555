"""Each clause of the generated alert expressions, evaluated alone by promtool.

The promtool files under alerts/tests/ prove an alert fires at its `for:` boundary for one
scenario; with several `or`-ed signals, a clause can be deleted and those files still pass.
Here the generator's expression meets one bad signal at a time and must name it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_events_exporter.alerts.rules import RulesConfig, build, num, render
from tests.support.promql import check_expr

TARGET = 'job="celery", instance="exporter:9540"'
HEALTHY = {
    f"celery_exporter_event_lag_seconds{{{TARGET}}}": "1x30",
    # Events still arriving: the last one is stamped at each step's own time (1m steps).
    f"celery_exporter_last_event_timestamp_seconds{{{TARGET}}}": "0+60x30",
    f"celery_exporter_series_dropped_total{{{TARGET}, metric=\"celery_task_sent\"}}": "0x30",
    f"celery_exporter_events_invalid_total{{{TARGET}, reason=\"malformed_json\"}}": "0x30",
    f"celery_exporter_tasks_evicted_total{{{TARGET}, reason=\"capacity\"}}": "0x30",
    f"celery_exporter_tasks_evicted_total{{{TARGET}, reason=\"ttl\"}}": "0x30",
}


def alert_expr(name: str, cfg: RulesConfig | None = None) -> str:
    for group in build(cfg)["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == name:
                return rule["expr"]
    raise AssertionError(f"no alert {name}")


@pytest.mark.parametrize(("reason", "series", "values"), [
    ("event_lag", "celery_exporter_event_lag_seconds{%s}", "120x30"),
    ("series_dropped",
     'celery_exporter_series_dropped_total{%s, metric="celery_task_sent"}', "0x15 0+5x15"),
    ("events_invalid",
     'celery_exporter_events_invalid_total{%s, reason="malformed_json"}', "0x15 0+5x15"),
    ("tasks_evicted", 'celery_exporter_tasks_evicted_total{%s, reason="capacity"}',
     "0x15 0+5x15"),
])
def test_falling_behind_fires_on_each_signal_alone_and_names_it(
        tmp_path: Path, reason: str, series: str, values: str) -> None:
    inputs = {**HEALTHY, series % TARGET: values}
    expr = f"count by (job, instance, reason) ({alert_expr('CeleryExporterFallingBehind')})"
    check_expr(tmp_path, expr, inputs, "20m",
               [(f'{{{TARGET}, reason="{reason}"}}', 1)])


@pytest.mark.parametrize(("lag", "last_event"), [
    ("120x14 1 120x15", "0+60x30"),  # one event on time 5m ago: not every event was late
    ("120x30", "0+60x15 900x15"),  # no event for 5m: events_stopped's case, not event_lag
])
def test_event_lag_needs_every_event_late_while_events_still_arrive(
        tmp_path: Path, lag: str, last_event: str) -> None:
    inputs = {**HEALTHY, f"celery_exporter_event_lag_seconds{{{TARGET}}}": lag,
              f"celery_exporter_last_event_timestamp_seconds{{{TARGET}}}": last_event}
    check_expr(tmp_path, alert_expr("CeleryExporterFallingBehind"), inputs, "20m", [])


def test_falling_behind_is_silent_when_healthy_and_for_ttl_evictions(tmp_path: Path) -> None:
    # TTL evictions follow missed events and are expected; only capacity ones count.
    inputs = {**HEALTHY, f'celery_exporter_tasks_evicted_total{{{TARGET}, reason="ttl"}}':
              "0x15 0+5x15"}
    check_expr(tmp_path, alert_expr("CeleryExporterFallingBehind"), inputs, "20m", [])


def test_falling_behind_lag_threshold_is_the_configured_one(tmp_path: Path) -> None:
    expr = alert_expr("CeleryExporterFallingBehind", RulesConfig(event_lag_seconds=200))
    inputs = {**HEALTHY, f"celery_exporter_event_lag_seconds{{{TARGET}}}": "120x30"}
    check_expr(tmp_path, expr, inputs, "20m", [])


# -- what the generator writes around the clauses ---------------------------------------------


def recording_names(cfg: RulesConfig) -> set[str]:
    return {rule["record"] for group in build(cfg)["groups"] for rule in group["rules"]
            if "record" in rule}


def test_numbers_are_written_as_promql_reads_them() -> None:
    assert (num(60.0), num(0.99), num(1234567.5)) == ("60", "0.99", "1234567.5")


def test_recorded_names_follow_prefix_and_group_labels() -> None:
    assert "job:celery_workers_with_capacity:count" in recording_names(RulesConfig())
    assert "job:workers_with_capacity:count" in recording_names(RulesConfig(prefix=""))
    assert "dc_job:celery_workers_with_capacity:count" in recording_names(
        RulesConfig(cluster_label="dc"))


def test_an_empty_job_selector_leaves_no_empty_matcher() -> None:
    text = render(RulesConfig(job_selector=""))
    assert "{," not in text, "a matcher list starting with a comma is not PromQL"
    assert 'job="celery"' not in text


def test_non_ascii_settings_are_written_as_they_are() -> None:
    text = render(RulesConfig(runbook_url="https://wiki.example/runbooks/célery"))
    assert "https://wiki.example/runbooks/célery#celeryworkerdown" in text

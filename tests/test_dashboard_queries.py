"""The dashboards' query helpers evaluated by Prometheus' engine (promtool), not as text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from celery_events_exporter import metrics as m
from celery_events_exporter.dashboards.common import Options, Q, variables
from tests.support.promql import check_expr

JOB = 'job="celery"'


def concrete(expr: str) -> str:
    """Grafana's variables as the e2e test substitutes them: one job, one cluster, every
    exporter replica (the instance variable's "All", its allValue)."""
    values = {"job": "celery", "cluster": "eu", "instance": ".*", "__rate_interval": "5m"}
    return re.sub(r"\$(\w+)", lambda mt: values[mt.group(1)], expr)


def up(worker: str) -> str:
    return f'celery_worker_up{{{JOB}, worker="{worker}"}}'


def clean(worker: str) -> str:
    return f'celery_worker_clean_shutdown{{{JOB}, worker="{worker}"}}'


def test_workers_lost_counts_down_workers_that_did_not_say_goodbye(tmp_path: Path) -> None:
    series = {
        up("live"): "1x5", clean("live"): "0x5",
        up("deployed"): "0x5", clean("deployed"): "1x5",  # worker-offline: not lost
        up("crashed"): "0x5", clean("crashed"): "0x5",
        up("old"): "0x5",  # an exporter without the clean-shutdown gauge: lost
    }
    expr = concrete(Q.for_options(Options()).workers_lost())
    check_expr(tmp_path, expr, series, "4m", [("{}", 2)])


def test_workers_lost_is_zero_when_all_are_up(tmp_path: Path) -> None:
    series = {up("a"): "1x5", clean("a"): "0x5", up("b"): "1x5"}
    expr = concrete(Q.for_options(Options()).workers_lost())
    check_expr(tmp_path, expr, series, "4m", [("{}", 0)])


def test_workers_lost_honours_extra_matchers_on_both_sides(tmp_path: Path) -> None:
    series = {up("a"): "0x5", clean("a"): "0x5", up("b"): "0x5", clean("b"): "1x5"}
    expr = concrete(Q.for_options(Options()).workers_lost('worker="a"'))
    check_expr(tmp_path, expr, series, "4m", [("{}", 1)])


def test_workers_lost_counts_a_worker_once_however_many_replicas_report_it(
        tmp_path: Path) -> None:
    # An HA pair of exporters: both see the same crash, and one replica's gauges are enough.
    series = {}
    for replica in ("exporter-0:9540", "exporter-1:9540"):
        where = f'{JOB}, instance="{replica}", pod="{replica[:10]}"'
        series.update({
            f'celery_worker_up{{{where}, worker="crashed"}}': "0x5",
            f'celery_worker_clean_shutdown{{{where}, worker="crashed"}}': "0x5",
            f'celery_worker_up{{{where}, worker="deployed"}}': "0x5",
            f'celery_worker_clean_shutdown{{{where}, worker="deployed"}}': "1x5"})
    expr = concrete(Q.for_options(Options()).workers_lost())
    check_expr(tmp_path, expr, series, "4m", [("{}", 1)])


def test_sum_rate_counts_a_task_once_however_many_replicas_report_it(tmp_path: Path) -> None:
    name = "celery_task_succeeded_total"
    series = {f'{name}{{{JOB}, instance="{replica}", name="a", queue="q", worker="w"}}':
              "0+60x10" for replica in ("exporter-0:9540", "exporter-1:9540")}
    expr = concrete(Q.for_options(Options()).sum_rate(m.TASK_SUCCEEDED, by="name"))
    check_expr(tmp_path, expr, series, "8m", [('{name="a"}', 1.0)])


@pytest.mark.parametrize(("metric", "absent"), [(m.TASK_FAILED, 0.0), (m.TASK_SUCCEEDED, None)])
def test_sum_rate_reads_zero_only_for_outcomes_that_may_never_happen(
        tmp_path: Path, metric: m.Metric, absent: float | None) -> None:
    series = {'celery_exporter_build_info{job="celery"}': "1x5"}  # nothing else exists
    expr = concrete(Q.for_options(Options()).sum_rate(metric))
    check_expr(tmp_path, expr, series, "4m", [] if absent is None else [("{}", absent)])


def test_sum_rate_by_label(tmp_path: Path) -> None:
    name = "celery_task_succeeded_total"
    series = {f'{name}{{{JOB}, name="a", queue="q", worker="w"}}': "0+60x10",
              f'{name}{{{JOB}, name="b", queue="q", worker="w"}}': "0+120x10"}
    expr = concrete(Q.for_options(Options()).sum_rate(m.TASK_SUCCEEDED, by="name"))
    check_expr(tmp_path, expr, series, "8m", [('{name="a"}', 1.0), ('{name="b"}', 2.0)])


def test_quantile_groups_by_le_and_the_given_labels(tmp_path: Path) -> None:
    name = "celery_task_runtime_seconds_bucket"
    series = {f'{name}{{{JOB}, name="a", queue="q", le="1"}}': "0+60x10",
              f'{name}{{{JOB}, name="a", queue="q", le="2"}}': "0+120x10",
              f'{name}{{{JOB}, name="a", queue="q", le="+Inf"}}': "0+120x10"}
    expr = Q.for_options(Options()).quantile(0.5, m.RUNTIME, by=("name",))
    expr = concrete(expr)
    check_expr(tmp_path, expr, series, "8m", [('{name="a"}', 1.0)])


def test_cluster_label_and_prefix_reach_the_selector(tmp_path: Path) -> None:
    opts = Options(cluster_label="dc", prefix="acme")
    series = {'acme_worker_up{job="celery", dc="eu", worker="a"}': "0x5",
              'acme_worker_up{job="celery", dc="us", worker="b"}': "0x5"}
    check_expr(tmp_path, concrete(Q.for_options(opts).workers_lost()), series, "4m",
               [("{}", 1)])


# -- options and variables ----------------------------------------------------------------


def test_options_accept_upper_case_names() -> None:
    opts = Options(cluster_label="Dc", prefix="Acme")
    assert Q.for_options(opts).m(m.WORKER_UP) == (
        'Acme_worker_up{job="celery", Dc=~"$cluster", job=~"$job", instance=~"$instance"}')


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"cluster_label": "1dc"}, "--cluster-label: not a label name: '1dc'"),
    ({"prefix": "1acme"}, "--prefix: not a valid metric name prefix: '1acme'"),
    ({"job_selector": '{job="x"'}, '--job-selector: give label matchers without braces, '
                                   'e.g. job="celery"'),
    ({"job_selector": 'job="x"}'}, '--job-selector: give label matchers without braces, '
                                   'e.g. job="celery"'),
])
def test_bad_options_name_the_flag(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as info:
        Options(**kwargs)
    assert str(info.value) == message


def test_an_empty_job_selector_leaves_only_the_variable_matchers() -> None:
    q = Q.for_options(Options(job_selector=""))
    assert q.m(m.WORKER_UP) == 'celery_worker_up{job=~"$job", instance=~"$instance"}'
    job = next(v for v in variables(q) if v.name == "job")
    assert job.query == "label_values(celery_exporter_build_info{}, job)"


def test_cluster_variable_picks_one_cluster_scoped_by_the_job_selector() -> None:
    q = Q.for_options(Options(cluster_label="dc", job_selector='job="celery", env="prod"'))
    cluster = next(v for v in variables(q) if v.name == "cluster").to_json_data()
    assert cluster["label"] == "Cluster"
    assert cluster["multi"] is False
    assert cluster["query"] == (
        'label_values(celery_exporter_build_info{job="celery", env="prod"}, dc)')
    assert cluster["current"] == {"selected": True, "text": "All", "value": "$__all"}

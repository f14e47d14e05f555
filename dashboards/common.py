"""House helpers over grafanalib: our units, legends, thresholds, variables and layout.

Dashboard modules only call these, so a grafanalib upgrade (one maintainer, pinned) is
absorbed here, and every dashboard gets the same datasource handling and selectors.
Metric names always come from `exporter.metrics`, never from string literals.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import attr
from grafanalib import core as g

from celery_events_exporter import metrics as m
from celery_events_exporter.alerts.config import RulesConfig
from celery_events_exporter.metrics import DEFAULT_PREFIX, Metric

# Grafana 9+ reads this schema without migrating panel fields away from what we emit.
SCHEMA_VERSION = 36
TAG = "celery"

# Units (Grafana unit ids). Custom suffixes keep task rates from reading as "ops".
SECONDS = "s"
RATIO = "percentunit"
COUNT = "short"
TASKS_PER_SECOND = "suffix:tasks/s"
EVENTS_PER_SECOND = "suffix:events/s"
MESSAGES_PER_SECOND = "suffix:msg/s"
PER_SECOND = "suffix:/s"

# Every panel and variable points at the datasource variable, so one dashboard works
# against any Prometheus the viewer picks.
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# "All" in a multi-value variable becomes this regex; `.*` also matches an empty label.
ALL_VALUE = ".*"

QUANTILES: tuple[float, ...] = (0.5, 0.95, 0.99)

# Task outcomes a healthy system may never see (see `Q.sum_rate`). Not task-sent: its
# absence means task_send_sent_event is off, which a 0 would hide.
ZERO_WHEN_ABSENT: frozenset[Metric] = frozenset(
    {m.TASK_FAILED, m.TASK_RETRIED, m.TASK_REJECTED, m.TASK_REVOKED})


@dataclass(frozen=True)
class Options:
    """Generation options: what differs between one Prometheus setup and another."""

    datasource: str = "Prometheus"
    job_selector: str = 'job="celery"'
    cluster_label: str = ""
    prefix: str = DEFAULT_PREFIX
    # The rules' configuration: thresholds drawn on panels and the HA replica labels come
    # from the same place as the alerts', so the two cannot disagree.
    rules: RulesConfig = field(default_factory=RulesConfig)

    @classmethod
    def from_rules(cls, rules: RulesConfig, datasource: str = "Prometheus") -> Options:
        return cls(datasource=datasource, job_selector=rules.job_selector,
                   cluster_label=rules.cluster_label, prefix=rules.prefix, rules=rules)

    def __post_init__(self) -> None:
        if self.cluster_label and not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", self.cluster_label):
            raise ValueError(f"--cluster-label: not a label name: {self.cluster_label!r}")
        if self.prefix and not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", self.prefix):
            raise ValueError(f"--prefix: not a valid metric name prefix: {self.prefix!r}")
        if self.job_selector.strip().startswith("{") or self.job_selector.strip().endswith("}"):
            raise ValueError("--job-selector: give label matchers without braces, "
                             'e.g. job="celery"')


@dataclass(frozen=True)
class Q:
    """Builds PromQL for one dashboard: selector plumbing and the idioms we repeat.

    `base` holds the matchers every query carries (job selector, cluster, `$job`). The
    queue/task/worker variable matchers are passed per metric, since not every metric has
    those labels and a matcher on a missing label would hide the series.
    """

    opts: Options
    base: tuple[str, ...] = field(default=())

    @classmethod
    def for_options(cls, opts: Options) -> Q:
        matchers = [opts.job_selector.strip()] if opts.job_selector.strip() else []
        if opts.cluster_label:
            matchers.append(f'{opts.cluster_label}=~"$cluster"')
        matchers += ['job=~"$job"', 'instance=~"$instance"']
        return cls(opts, tuple(matchers))

    def name(self, metric: Metric, suffix: str = "") -> str:
        return metric.full(self.opts.prefix) + suffix

    def sel(self, *extra: str) -> str:
        return "{" + ", ".join((*self.base, *extra)) + "}"

    def m(self, metric: Metric, *extra: str, suffix: str = "") -> str:
        """An instant selector for a catalogue metric."""
        return self.name(metric, suffix) + self.sel(*extra)

    def up(self) -> str:
        """Prometheus' own `up` for the exporter's scrape job."""
        return "up" + self.sel()

    def any_of(self, metrics: Sequence[Metric], *extra: str) -> str:
        """One selector over several metrics (`__name__` alternation).

        Summing succeeded and failed through one selector keeps the total defined when one
        of the two counters has no series yet, which `a + b` would not.
        """
        names = "|".join(self.name(x) for x in metrics)
        return "{" + ", ".join((f'__name__=~"{names}"', *self.base, *extra)) + "}"

    def one(self, expr: str) -> str:
        """One HA replica's value per series, as the rules do (alerts/rules.py): two
        exporters on one broker both count every event."""
        replicas = self.opts.rules.replicas
        return f"max without ({', '.join(replicas)}) ({expr})" if replicas else expr

    def g(self, metric: Metric, *extra: str) -> str:
        """A gauge, one replica's value per series."""
        return self.one(self.m(metric, *extra))

    def rate(self, selector: str, window: str = "$__rate_interval") -> str:
        """Per-second rate, one replica's per series."""
        return self.one(f"rate({selector}[{window}])")

    def increase(self, selector: str, window: str = "$__range") -> str:
        """Increase over a window (the dashboard's range by default), one replica's per
        series."""
        return self.one(f"increase({selector}[{window}])")

    def sum_rate(self, metric: Metric, *extra: str, by: str = "") -> str:
        """Summed per-second rate; outcomes that may never have happened read as 0.

        The exporter creates a task counter series on its first event, so no series means
        none happened, and a flat 0 says that better than "No data" (which reads as broken).
        `or on () vector(0)` only adds the 0 when the left side is empty, and only to an
        ungrouped sum: inside `by (...)` it would add a series without the labels, a blank
        legend entry.
        """
        grouping = f" by ({by}) " if by else ""
        expr = f"sum{grouping}({self.rate(self.m(metric, *extra))})"
        if metric in ZERO_WHEN_ABSENT and not by:
            return f"{expr} or on () vector(0)"
        return expr

    def workers_up(self, *extra: str) -> str:
        """Live worker nodes: with grouped worker labels `up` already counts a group's."""
        return f"sum({self.g(m.WORKER_UP, *extra)})"

    def workers_lost(self, *extra: str) -> str:
        """Worker series down without a goodbye (crashed, not deployed away): the ones that
        page. With grouped labels a group counts once, when all its nodes are down."""
        return (f"count(({self.g(m.WORKER_UP, *extra)} == 0) unless "
                f"({self.g(m.WORKER_CLEAN_SHUTDOWN, *extra)} == 1)) or vector(0)")

    def workers_shut_down(self, *extra: str) -> str:
        return f"count({self.g(m.WORKER_CLEAN_SHUTDOWN, *extra)} == 1) or vector(0)"

    def quantile(self, q: float, metric: Metric, *extra: str, by: Iterable[str] = ()) -> str:
        labels = ", ".join((*by, "le"))
        bucket = self.m(metric, *extra, suffix="_bucket")
        return f"histogram_quantile({q}, sum by ({labels}) ({self.rate(bucket)}))"

    def worst(self, q: float, metric: Metric, *extra: str) -> str:
        """The quantile of the worst queue: one quantile over all queues hides a slow one
        behind the fast ones."""
        return f"max({self.quantile(q, metric, *extra, by=('job', 'queue'))})"


def steps(*pairs: tuple[str, float | None]) -> list[dict[str, Any]]:
    """Threshold steps in the modern fieldConfig shape (grafanalib's Threshold emits the
    legacy 'null' string for the base step, which Grafana 8+ does not read)."""
    return [{"color": color, "value": value} for color, value in pairs]


def up_down_mappings() -> list[dict[str, Any]]:
    return [{
        "type": "value",
        "options": {
            "0": {"color": "red", "index": 0, "text": "DOWN"},
            "1": {"color": "green", "index": 1, "text": "UP"},
        },
    }]


Target = tuple[str, str]  # (expr, legend)


class _Target(g.Target):
    """grafanalib's Target with Grafana's `exemplar` switch: latency quantiles show the
    exemplars the exporter puts on histogram buckets (task ids), which the provisioned
    Prometheus datasource links to Flower."""

    def to_json_data(self) -> dict:
        data = super().to_json_data()
        if not self.instant and "histogram_quantile(" in self.expr:
            data["exemplar"] = True
        return data


def _targets(targets: Sequence[Target], instant: bool = False, fmt: str = "time_series"
             ) -> list[g.Target]:
    return [
        # intervalFactor 1: grafanalib's default of 2 halves the resolution of every graph.
        _Target(expr=expr, legendFormat=legend, refId=chr(ord("A") + i),
                datasource=DATASOURCE, instant=instant, format=fmt, intervalFactor=1)
        for i, (expr, legend) in enumerate(targets)
    ]


@dataclass(frozen=True)
class Cell:
    """A panel plus the size `layout` needs to place it."""

    panel: g.Panel
    w: int
    h: int


VARS = "${__url_time_range}&${datasource:queryparam}&${job:queryparam}&${instance:queryparam}"


def link(title: str, uid: str, *params: str) -> dict[str, Any]:
    """A link to another dashboard carrying the time range and the shared variables."""
    query = "&".join((VARS, *params))
    return {"title": title, "url": f"/d/{uid}/{uid}?{query}", "targetBlank": False}


def data_links(*links: dict[str, Any]) -> list[dict[str, Any]]:
    """Links on every series of a panel (`${__field.labels.x}` fills in its labels)."""
    return [{"matcher": {"id": "byRegexp", "options": ".*"},
             "properties": [{"id": "links", "value": list(links)}]}]


def timeseries(title: str, targets: Sequence[Target], *, unit: str, description: str,
               w: int = 12, h: int = 8, stack: bool = False, min_value: int | None = None,
               max_value: int | None = None, thresholds: list[dict[str, Any]] | None = None,
               step: bool = False, links: Sequence[dict[str, Any]] = (),
               series_links: Sequence[dict[str, Any]] = ()) -> Cell:
    panel = g.TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=_targets(targets),
        unit=unit,
        valueMin=min_value,
        valueMax=max_value,
        fillOpacity=20 if stack else 0,
        stacking={"mode": "normal", "group": "A"} if stack else {},
        lineInterpolation="stepAfter" if step else "linear",
        legendDisplayMode="table",
        legendPlacement="bottom",
        legendCalcs=["lastNotNull", "max"],
        tooltipMode="multi",
        tooltipSort="desc",
        thresholds=thresholds or steps(("green", None)),
        thresholdsStyleMode="line" if thresholds else "off",
        links=list(links),
        overrides=data_links(*series_links) if series_links else [],
        maxDataPoints=None,
    )
    return Cell(panel, w, h)


def stat(title: str, targets: Sequence[Target], *, unit: str, description: str,
         thresholds: list[dict[str, Any]] | None = None,
         mappings: list[dict[str, Any]] | None = None, w: int = 3, h: int = 4,
         decimals: int | None = None, links: Sequence[dict[str, Any]] = ()) -> Cell:
    panel = g.Stat(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=_targets(targets),
        format=unit,
        thresholds=thresholds or steps(("green", None)),
        mappings=mappings or [],
        reduceCalc="lastNotNull",
        graphMode="area",
        colorMode="value",
        textMode="value_and_name" if len(targets) > 1 else "value",
        decimals=decimals,
        noValue="No data",
        links=list(links),
        maxDataPoints=None,
    )
    return Cell(panel, w, h)


def table(title: str, expr: str, *, description: str, hide: Sequence[str] = (),
          w: int = 12, h: int = 8) -> Cell:
    """An instant-query table of a metric's labels (e.g. `*_info` gauges)."""
    exclude = {name: True for name in ("Time", "Value", "__name__", *hide)}
    panel = g.Table(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=_targets([(expr, "")], instant=True, fmt="table"),
        transformations=[{"id": "organize", "options": {"excludeByName": exclude}}],
        filterable=True,
        maxDataPoints=None,
    )
    return Cell(panel, w, h)


def layout(rows: Sequence[tuple[str, Sequence[Cell]]]) -> list[g.Panel]:
    """Place cells left to right under row headers, wrapping at Grafana's 24 columns.

    Explicit gridPos keeps the JSON stable: Grafana would otherwise reflow panels and
    rewrite positions on first save.
    """
    panels: list[g.Panel] = []
    y = 0
    for title, cells in rows:
        panels.append(g.RowPanel(title=title, gridPos=g.GridPos(h=1, w=24, x=0, y=y)))
        y += 1
        x, line_h = 0, 0
        for cell in cells:
            if x + cell.w > 24:
                x, y, line_h = 0, y + line_h, 0
            panels.append(attr.evolve(cell.panel, gridPos=g.GridPos(h=cell.h, w=cell.w, x=x, y=y)))
            x += cell.w
            line_h = max(line_h, cell.h)
        y += line_h
    return panels


@attr.s
class _Variable(g.Template):
    """grafanalib saves "All" as text "$__all"; Grafana saves it as below, and a
    multi-value variable's current value is a list."""

    def to_json_data(self) -> dict[str, Any]:
        data: dict[str, Any] = super().to_json_data()
        if self.includeAll and self.default == "$__all":
            data["current"] = {
                "selected": True,
                "text": ["All"] if self.multi else "All",
                "value": ["$__all"] if self.multi else "$__all",
            }
        return data


def _query_variable(name: str, label: str, query: str, *, multi: bool = True,
                    include_all: bool = True) -> g.Template:
    return _Variable(
        name=name,
        label=label,
        query=query,
        dataSource=DATASOURCE,
        default="$__all" if include_all else None,
        includeAll=include_all,
        allValue=ALL_VALUE if include_all else None,
        multi=multi,
        # Refresh on time range change: workers and queues come and go.
        refresh=g.REFRESH_ON_TIME_RANGE_CHANGE,
        sort=g.SORT_ALPHA_ASC,
    )


def variables(q: Q, *, queue: bool = False, task: bool = False, worker: bool = False
              ) -> list[g.Template]:
    """Datasource, cluster (if configured), job, then the per-dashboard label variables.

    Each query variable is scoped by the ones before it, so picking a job narrows the
    queue list to that job's queues.
    """
    opts = q.opts
    build_info = q.name(m.BUILD_INFO)
    out = [g.Template(name="datasource", label="Data source", query="prometheus",
                      type="datasource", default=opts.datasource, hide=g.SHOW)]
    scope = [opts.job_selector.strip()] if opts.job_selector.strip() else []
    if opts.cluster_label:
        out.append(_query_variable(
            "cluster", "Cluster",
            f"label_values({build_info}{{{', '.join(scope)}}}, {opts.cluster_label})",
            multi=False))
        scope.append(f'{opts.cluster_label}=~"$cluster"')
    out.append(_query_variable(
        "job", "Job", f"label_values({build_info}{{{', '.join(scope)}}}, job)"))
    scope.append('job=~"$job"')
    # Exporter replicas (an HA pair): "All" is right, queries keep one replica per series.
    out.append(_query_variable(
        "instance", "Exporter", f"label_values({build_info}{{{', '.join(scope)}}}, instance)"))
    scope.append('instance=~"$instance"')
    scoped = ", ".join(scope)
    if queue:
        # Queue length covers queues nothing consumes yet; received covers queues the
        # probes do not watch. Either alone hides the queue you are looking for.
        names = "|".join(q.name(x) for x in (m.QUEUE_LENGTH, m.TASK_RECEIVED))
        out.append(_query_variable(
            "queue", "Queue", f'label_values({{__name__=~"{names}", {scoped}}}, queue)'))
        scope.append('queue=~"$queue"')
    if task:
        names = "|".join(q.name(x) for x in (m.TASK_SENT, m.TASK_RECEIVED))
        out.append(_query_variable(
            "task", "Task", f'label_values({{__name__=~"{names}", {", ".join(scope)}}}, name)'))
    if worker:
        out.append(_query_variable(
            "worker", "Worker", f"label_values({q.name(m.WORKER_UP)}{{{scoped}}}, worker)"))
    return out


def dashboard(*, title: str, uid: str, description: str, q: Q, panels: list[g.Panel],
              templating: list[g.Template]) -> g.Dashboard:
    return g.Dashboard(
        title=title,
        uid=uid,
        description=description,
        tags=[TAG],
        editable=True,
        panels=panels,
        templating=g.Templating(list=templating),
        links=[g.DashboardLink(title="Celery", tags=[TAG], asDropdown=True, includeVars=True,
                               keepTime=True, type="dashboards")],
        time=g.Time("now-3h", "now"),
        timezone="browser",
        refresh="30s",
        graphTooltip=g.GRAPH_TOOLTIP_MODE_SHARED_CROSSHAIR,
        schemaVersion=SCHEMA_VERSION,
    ).auto_panel_ids()

"""The fast renderers against prometheus_client's own, and content negotiation per Accept."""

from __future__ import annotations

from functools import partial

import pytest
import requests
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.openmetrics import exposition as om
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.samples import Exemplar, Sample

from celery_events_exporter import metrics as m
from celery_events_exporter.exposition import (
    TaskCounter,
    TaskHistogram,
    created_times,
    generate_openmetrics,
    generate_text,
    negotiate,
)
from celery_events_exporter.http import ExporterServer, serve
from celery_events_exporter.pipeline import Pipeline
from celery_events_exporter.probes import ProbeResults
from celery_events_exporter.state import State
from tests.support.servers import free_port
from tests.test_collector import registry_for, scenario
from tests.test_state import T0, W1, feed, lifecycle

PROMETHEUS_2_42 = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                   "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
PROMETHEUS_2_49 = ("application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-"
                   "text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2")
PROMETHEUS_3 = ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
                "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;"
                "escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2")
PROMETHEUS_3_LEGACY = PROMETHEUS_3.replace("allow-utf-8", "underscores")
PROTOBUF = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;" \
           "encoding=delimited"
OM_100 = "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping="
TEXT_004 = "text/plain; version=0.0.4; charset=utf-8"
TEXT_100 = "text/plain; version=1.0.0; charset=utf-8; escaping="


def hostile_pipeline() -> Pipeline:
    state = State()
    feed(state, lifecycle("a", T0, name='evil"name\nwith\\stuff{}=,', queue="q\n\"x"))
    feed(state, lifecycle("b", T0, outcome="task-failed"))
    return Pipeline(state)


def scraped(registry: CollectorRegistry) -> CollectorRegistry:
    """After a first scrape: new series have been shown at 0 once (see state.series), so
    every later render of the registry shows the same values."""
    generate_text(registry)
    return registry


def registries() -> list[CollectorRegistry]:
    return [scraped(registry_for(*scenario())),
            scraped(registry_for(hostile_pipeline(), ProbeResults())),
            scraped(registry_for(*scenario(), prefix="acme",
                                 static_labels=(("cluster", "eu1"),)))]


class _Reference:
    """The same families as prometheus_client builds them, `_created` samples added where
    prometheus_client's own counters and histograms put them: after each series' samples."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> list[Metric]:
        families = []
        for metric in self.registry.collect():
            if isinstance(metric, TaskCounter | TaskHistogram):
                samples, last = [], len(metric.samples) - 1
                for i, s in enumerate(metric.samples):
                    if s.name.endswith("_bucket"):
                        s = s._replace(exemplar=_exemplar_for(metric, s.labels))
                    samples.append(s)
                    end = s.name.endswith("_total") if metric.type == "counter" else \
                        (s.name.endswith("_sum") or i == last)
                    if end:
                        samples.append(Sample(metric.name + "_created", s.labels,
                                              _created_for(metric, s.labels)))
                metric.samples = samples
            families.append(metric)
        return families


def _exemplar_for(metric: TaskHistogram, labels: dict[str, str]) -> Exemplar | None:
    names = metric._labelnames[:len(metric._labelnames) - len(metric._static)]
    marks = metric.exemplars.get(tuple(labels[n] for n in names))
    mark = marks[metric._les.index(labels["le"])] if marks else None
    if mark is None:
        return None
    task_id, value, when = mark
    return Exemplar({"task_id": task_id}, value, when)


def _created_for(metric: TaskCounter | TaskHistogram, labels: dict[str, str]) -> float:
    # The state keeps each series' creation time; the label key is the state's own tuple.
    names = metric._labelnames[:len(metric._labelnames) - len(metric._static)]
    return metric.created(tuple(labels[n] for n in names if n != "le"))


def _families(text: str) -> dict[str, str]:
    """Exposition text split at each HELP line, by family name."""
    out: dict[str, str] = {}
    for chunk in text.split("# HELP ")[1:]:
        out[chunk.split(" ", 1)[0]] = "# HELP " + chunk
    return out


@pytest.mark.parametrize("which", range(3))
def test_openmetrics_is_prometheus_client_bytes_family_by_family(which: int) -> None:
    registry = registries()[which]
    ours = generate_openmetrics(registry).decode()
    theirs = om.generate_latest(_Reference(registry)).decode()
    assert ours.endswith("\n# EOF\n") and theirs.endswith("\n# EOF\n")
    ours_f, theirs_f = _families(ours[:-6]), _families(theirs[:-6])
    assert list(ours_f) == list(theirs_f)
    for name, body in theirs_f.items():
        assert ours_f[name] == body, name


@pytest.mark.parametrize("which", range(3))
def test_openmetrics_parses_and_every_task_series_has_created(which: int) -> None:
    registry = registries()[which]
    family = next(m for m in registry.collect() if isinstance(m, TaskCounter))
    times = set(family._created.values())
    families = {f.name: f for f in
                text_string_to_metric_families(generate_openmetrics(registry).decode())}
    sent = families["acme_task_sent" if which == 2 else "celery_task_sent"]
    totals = [s for s in sent.samples if s.name.endswith("_total")]
    created = [s for s in sent.samples if s.name.endswith("_created")]
    assert totals and [s.labels for s in created] == [s.labels for s in totals]
    assert times and {s.value for s in created} <= times
    runtime = families["acme_task_runtime_seconds" if which == 2
                       else "celery_task_runtime_seconds"]
    counts = [s.labels for s in runtime.samples if s.name.endswith("_count")]
    assert counts and counts == [s.labels for s in runtime.samples
                                 if s.name.endswith("_created")]


def test_text_renderer_is_still_prometheus_client_bytes() -> None:
    for registry in registries():
        assert generate_text(registry) == generate_latest(registry)


def test_created_times_reads_a_per_series_mapping() -> None:
    class WithTimes:
        created = {("app.add", "default"): T0 + 5}

    class Without:
        __slots__ = ("data",)

    assert created_times(WithTimes()) == {("app.add", "default"): T0 + 5}
    assert created_times(WithTimes()) is not WithTimes.created, "a copy, taken under the lock"
    assert created_times(Without()) is None
    family = TaskCounter("x", "h", ["name", "queue"], {("app.add", "default"): [2.0],
                                                     ("app.b", "q"): [1.0]},
                         (), -1, {}, created_times(WithTimes()), T0)
    text = generate_openmetrics(_Registry(family)).decode()
    assert 'x_created{name="app.add",queue="default"} 1.700000005e+09\n' in text
    assert 'x_created{name="app.b",queue="q"} 1.7e+09\n' in text


def test_openmetrics_help_escapes_like_prometheus_client() -> None:
    doc = 'say "hi" \\ twice\nplease'
    ours = generate_openmetrics(_Registry(TaskCounter("x", doc, [], {(): [1.0]}, (), -1, {},
                                                      None, T0)))
    theirs = om.generate_latest(_Registry(CounterMetricFamily("x", doc, 1.0, created=T0)))
    assert ours == theirs


class _Registry:
    def __init__(self, *families: Metric) -> None:
        self.families = families

    def collect(self) -> tuple[Metric, ...]:
        return self.families


# (Accept header, what we send: (renderer, Content-Type))
NEGOTIATION = [
    (PROMETHEUS_2_42, (generate_openmetrics, OM_100 + "underscores")),
    (PROMETHEUS_2_49, (generate_openmetrics, OM_100 + "underscores")),
    (PROMETHEUS_3, (generate_openmetrics, OM_100 + "allow-utf-8")),
    (PROMETHEUS_3_LEGACY, (generate_openmetrics, OM_100 + "underscores")),
    (f"{PROTOBUF};q=0.7," + PROMETHEUS_3, (generate_openmetrics, OM_100 + "allow-utf-8")),
    ("application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=0.0.4;q=0.4",
     (generate_openmetrics, "application/openmetrics-text; version=0.0.1; charset=utf-8")),
    ("text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3",
     (generate_text, TEXT_100 + "allow-utf-8")),
    ("text/plain;version=1.0.0", (generate_text, TEXT_100 + "underscores")),
    ("text/plain;version=1.0.0;escaping=values", (generate_text, TEXT_100 + "values")),
    ("text/plain;version=1.0.0;escaping=bogus", (generate_text, TEXT_100 + "underscores")),
    ("text/plain;version=0.0.4", (generate_text, TEXT_004)),
    ("text/plain", (generate_text, TEXT_004)),
    ("application/openmetrics-text", (generate_openmetrics, OM_100 + "underscores")),
    ("Application/OpenMetrics-Text; Version=1.0.0", (generate_openmetrics,
                                                     OM_100 + "underscores")),
    ("*/*", (generate_text, TEXT_004)),
    ("", (generate_text, TEXT_004)),
    (None, (generate_text, TEXT_004)),
    (PROTOBUF, (generate_text, TEXT_004)),
    ("application/json", (generate_text, TEXT_004)),
    ("application/openmetrics-text;version=2.0.0", (generate_text, TEXT_004)),
    # q decides, not the order; q=0 means "not this one"
    ("text/plain;version=0.0.4;q=0.3,application/openmetrics-text;version=1.0.0;q=0.9",
     (generate_openmetrics, OM_100 + "underscores")),
    ("application/openmetrics-text;q=0", (generate_text, TEXT_004)),
    ("text/plain;version=0.0.4,application/openmetrics-text", (generate_text, TEXT_004)),
    ("application/openmetrics-text;q=oops,text/plain;q=0.1", (generate_text, TEXT_004)),
]


@pytest.mark.parametrize(("accept", "expected"), NEGOTIATION)
def test_negotiation(accept: str | None, expected: tuple) -> None:
    assert negotiate(accept) == expected


@pytest.mark.parametrize("kind", ["openmetrics-text;version=1.0.0", "plain;version=1.0.0"])
def test_dots_escaping_goes_to_prometheus_client(kind: str) -> None:
    render, content_type = negotiate(f"application/{kind};escaping=dots".replace(
        "application/plain", "text/plain"))
    assert isinstance(render, partial) and render.keywords["escaping"] == om.DOTS
    assert content_type.endswith("; escaping=dots")
    assert b"celery__task__sent__total" in render(registry_for(*scenario()))


@pytest.mark.parametrize("escaping", ["underscores", "allow-utf-8", "values"])
def test_text_1_0_0_is_prometheus_client_bytes(escaping: str) -> None:
    render, _ = negotiate(f"text/plain;version=1.0.0;escaping={escaping}")
    for registry in registries():
        assert render(registry) == generate_latest(registry, escaping=escaping)


def test_the_server_answers_each_prometheus_with_openmetrics() -> None:
    pipeline, results = scenario()
    server = ExporterServer(("127.0.0.1", free_port()), registry_for(pipeline, results),
                            lambda: (True, "ok"))
    serve(server)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        for accept, content_type in ((PROMETHEUS_2_42, OM_100 + "underscores"),
                                     (PROMETHEUS_3, OM_100 + "allow-utf-8"),
                                     ("text/plain;version=1.0.0", TEXT_100 + "underscores")):
            reply = requests.get(url, headers={"Accept": accept}, timeout=10)
            assert reply.status_code == 200
            assert reply.headers["Content-Type"] == content_type
            if "openmetrics" in content_type:
                assert reply.text.endswith("# EOF\n")
                assert list(text_string_to_metric_families(reply.text))
            else:
                assert "_created" not in reply.text
    finally:
        server.shutdown()
        server.server_close()


def test_cached_label_strings_are_the_same_bytes_on_the_next_scrape() -> None:
    registry = scraped(registry_for(*scenario()))
    first = generate_openmetrics(registry)
    assert generate_text(registry) and generate_openmetrics(registry) == first


def test_histogram_buckets_carry_the_latest_task_as_exemplar() -> None:
    state = State()
    feed(state, lifecycle("first", T0))  # runtime 0.5 s
    feed(state, lifecycle("second", T0 + 5))  # the same bucket: replaces "first"
    slow = lifecycle("slow", T0 + 9)
    feed(state, [*slow[:3], slow[3] | {"runtime": 40.0}])
    feed(state, lifecycle("x" * 101, T0 + 12))  # too long for an exemplar: counted only
    text = generate_openmetrics(scraped(registry_for(Pipeline(state), ProbeResults()))).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    marked = {(s.labels["le"], s.exemplar.labels["task_id"], s.exemplar.value)
              for s in families["celery_task_runtime_seconds"].samples if s.exemplar}
    assert marked == {("0.5", "second", 0.5), ("60.0", "slow", 40.0)}
    assert 'task_id="first"' not in text and "x" * 101 not in text
    assert " # {" not in generate_text(registry_for(Pipeline(state), ProbeResults())).decode()


def test_new_series_are_zero_in_the_first_openmetrics_scrape_then_their_value() -> None:
    """The first scrape that shows a task series shows it at 0 (so rate() sees its first
    increment), with no exemplar on the zeroed buckets; the next shows the value."""
    state = State()
    feed(state, lifecycle("a", T0))
    registry = registry_for(Pipeline(state), ProbeResults())
    first, second = (
        {f.name: f for f in text_string_to_metric_families(generate_openmetrics(registry)
                                                          .decode())} for _ in range(2))
    sent = [(s.name, s.value) for s in first["celery_task_sent"].samples
            if s.name.endswith("_total")]
    assert sent == [("celery_task_sent_total", 0.0)]
    runtime = first["celery_task_runtime_seconds"].samples
    assert not any(s.exemplar for s in runtime)
    assert all(s.value == 0 for s in runtime if not s.name.endswith("_created"))
    sent = [(s.name, s.value) for s in second["celery_task_sent"].samples
            if s.name.endswith("_total")]
    assert sent == [("celery_task_sent_total", 1.0)]
    assert any(s.exemplar for s in second["celery_task_runtime_seconds"].samples)


def test_warm_openmetrics_caches_follow_the_state_between_scrapes() -> None:
    """`_created` lines and exemplar texts are kept between scrapes: a bucket's newer task
    and a series created again (its worker forgotten, then back) must show, not the cache."""
    state = State()
    feed(state, lifecycle("first", T0))
    registry = scraped(registry_for(Pipeline(state), ProbeResults()))
    before = generate_openmetrics(registry).decode()
    assert 'task_id="first"' in before
    feed(state, lifecycle("second", T0 + 5))  # the same bucket: replaces "first"
    received = state.counters[m.TASK_RECEIVED.key]
    received.forget_worker(W1, m.TASK_RECEIVED.labels.index("worker"))
    feed(state, lifecycle("third", T0 + 50))  # the worker's series again, created later
    generate_text(registry)  # the re-created series' zero-first scrape
    ours = generate_openmetrics(registry).decode()
    assert ours == om.generate_latest(_Reference(registry)).decode()
    assert 'task_id="first"' not in ours and 'task_id="third"' in ours
    assert ours != before

"""Scrape-time rendering: exact samples, a golden exposition, and promtool's linter."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from celery_events_exporter.collector import CeleryCollector
from celery_events_exporter.labels import LabelPolicy
from celery_events_exporter.pipeline import Pipeline
from celery_events_exporter.probes import ProbeResults
from celery_events_exporter.state import State, StateConfig, apply_worker_probe
from tests.test_state import T0, W1, W2, feed, lifecycle, online

GOLDEN = Path(__file__).parent / "golden" / "exposition.prom"


def scenario(config: StateConfig | None = None) -> tuple[Pipeline, ProbeResults]:
    state = State(config or StateConfig())
    online(state, W1, T0)
    online(state, W2, T0)
    apply_worker_probe(state, W1, 4, 4, frozenset({"default"}))
    events = lifecycle("a", T0) + lifecycle("b", T0, outcome="task-failed", worker=W2)
    events += lifecycle("c", T0, name="app.report", queue="reports")[:2]
    feed(state, events, lag=0.01)
    state.ingest(["garbage"], T0 + 1)
    pipeline = Pipeline(state)
    pipeline.set_connected(True, T0)
    results = ProbeResults()
    results.queues.length = {"default": 3.0, "reports": 0.0}
    return pipeline, results


def registry_for(pipeline: Pipeline, results: ProbeResults, **kwargs: object) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(CeleryCollector(pipeline, results, **kwargs))  # type: ignore[arg-type]
    return registry


def test_samples() -> None:
    registry = registry_for(*scenario())
    get = registry.get_sample_value
    assert get("celery_task_succeeded_total",
               {"name": "app.add", "queue": "default", "worker": W1}) == 1
    assert get("celery_task_failed_total", {"name": "app.add", "queue": "default", "worker": W2,
                                            "exception": "ValueError"}) == 1
    assert get("celery_task_runtime_seconds_count", {"name": "app.add", "queue": "default"}) == 2
    assert get("celery_task_runtime_seconds_bucket",
               {"name": "app.add", "queue": "default", "le": "0.5"}) == 2
    assert get("celery_task_queue_wait_seconds_bucket",
               {"name": "app.add", "queue": "default", "le": "+Inf"}) == 2
    assert get("celery_worker_up", {"worker": W1}) == 1
    assert get("celery_worker_tasks_prefetched", {"worker": W1}) == 1
    assert get("celery_worker_pool_processes", {"worker": W1}) == 4
    assert get("celery_worker_pool_processes", {"worker": W2}) is None, "unknown until inspected"
    assert get("celery_worker_info", {"worker": W1, "version": "5.7.0",
                                      "implementation": "py-celery", "system": "Linux"}) == 1
    assert get("celery_queue_length", {"queue": "default"}) == 3
    assert get("celery_queue_consumers", {"queue": "default"}) == 1, "Redis: live consumers"
    assert get("celery_queue_consumers", {"queue": "reports"}) == 0
    assert get("celery_exporter_events_invalid_total", {"reason": "not_an_object"}) == 1
    assert get("celery_exporter_broker_connected") == 1
    assert get("celery_exporter_tasks_tracked") == 1
    assert get("celery_exporter_events_total", {"type": "task-sent"}) == 3


def test_worker_gauges_reflect_timeout_and_removal() -> None:
    pipeline, results = scenario(StateConfig(worker_down_retention=60))
    registry = registry_for(pipeline, results)
    pipeline.state.tick(T0 + 30)
    assert registry.get_sample_value("celery_worker_up", {"worker": W1}) == 0
    assert registry.get_sample_value("celery_worker_tasks_prefetched", {"worker": W1}) == 0
    pipeline.state.tick(T0 + 95)
    assert registry.get_sample_value("celery_worker_up", {"worker": W1}) is None
    text = generate_latest(registry).decode()
    assert W1 not in text


def test_clean_shutdown_is_told_apart_from_a_crash() -> None:
    pipeline, results = scenario(StateConfig(worker_timeout=10))
    registry = registry_for(pipeline, results)
    get = registry.get_sample_value
    assert get("celery_worker_clean_shutdown", {"worker": W1}) == 0
    pipeline.state.ingest([{"type": "worker-offline", "hostname": W1, "timestamp": T0 + 5}],
                          T0 + 5)
    pipeline.state.tick(T0 + 20)  # W2 times out: a crash
    assert get("celery_worker_up", {"worker": W1}) == 0
    assert get("celery_worker_clean_shutdown", {"worker": W1}) == 1
    assert get("celery_worker_up", {"worker": W2}) == 0
    assert get("celery_worker_clean_shutdown", {"worker": W2}) == 0


def test_grouped_workers_are_a_clean_shutdown_only_when_every_node_is() -> None:
    policy = LabelPolicy(worker_mode="regex", worker_regex=re.compile(r"^celery@(\w+)-\d+$"))
    state = State(StateConfig(labels=policy, worker_timeout=10))
    for node in ("celery@web-1", "celery@web-2"):
        online(state, node, T0)
    registry = registry_for(Pipeline(state), ProbeResults())

    def goodbye(node: str, t: float) -> None:
        state.ingest([{"type": "worker-offline", "hostname": node, "timestamp": t}], t)

    goodbye("celery@web-1", T0 + 1)
    assert registry.get_sample_value("celery_worker_up", {"worker": "web"}) == 1
    assert registry.get_sample_value("celery_worker_clean_shutdown", {"worker": "web"}) == 0
    state.tick(T0 + 20)  # web-2 falls silent: the group is down, not cleanly
    assert registry.get_sample_value("celery_worker_up", {"worker": "web"}) == 0
    assert registry.get_sample_value("celery_worker_clean_shutdown", {"worker": "web"}) == 0
    online(state, "celery@web-2", T0 + 21)
    goodbye("celery@web-2", T0 + 22)
    assert registry.get_sample_value("celery_worker_clean_shutdown", {"worker": "web"}) == 1


def test_prefix_static_labels_and_worker_label_none() -> None:
    pipeline, results = scenario(StateConfig(labels=LabelPolicy(worker_mode="none")))
    registry = registry_for(pipeline, results, prefix="acme_celery",
                            static_labels=(("cluster", "eu1"),))
    get = registry.get_sample_value
    assert get("acme_celery_task_succeeded_total",
               {"name": "app.add", "queue": "default", "cluster": "eu1"}) == 1
    assert get("acme_celery_worker_up", {"worker": W1, "cluster": "eu1"}) == 1
    assert get("acme_celery_exporter_broker_connected", {"cluster": "eu1"}) == 1


def test_hostile_label_values_stay_valid_exposition() -> None:
    state = State()
    name = 'evil"name\nwith\\stuff{}=,'
    feed(state, lifecycle("a", T0, name=name, queue="q\n\"x"))
    registry = registry_for(Pipeline(state), ProbeResults())
    text = generate_latest(registry).decode()
    assert 'name="evil\\"name\\nwith\\\\stuff{}=,"' in text
    _promtool_check(text)


def _normalise(text: str) -> str:
    # Library versions vary between machines; the rest of the exposition must not.
    return re.sub(r"^celery_exporter_build_info\{.*$", "celery_exporter_build_info{...} 1.0",
                  text, flags=re.M)


def test_golden_exposition() -> None:
    text = _normalise(generate_latest(registry_for(*scenario())).decode())
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), (
        "exposition changed; if intended, regenerate with "
        "UPDATE_GOLDEN=1 pytest tests/test_collector.py::test_golden_exposition")


def test_openmetrics_rendering() -> None:
    text = generate_openmetrics(registry_for(*scenario())).decode()
    assert text.endswith("# EOF\n")
    assert "# TYPE celery_task_succeeded counter" in text
    assert 'celery_task_succeeded_total{name="app.add",queue="default",worker="celery@w1"} 1.0' \
        in text


def _promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required (apt-get install prometheus); scripts/test installs it"
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                            capture_output=True, timeout=60)
    # promtool lints naming too; anything it prints is a finding.
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), \
        (result.stdout + result.stderr).decode()


def test_promtool_accepts_the_exposition() -> None:
    _promtool_check(generate_latest(registry_for(*scenario())).decode())


@pytest.mark.parametrize("accept", ["text/plain", "application/openmetrics-text"])
def test_negotiated_formats_have_every_family(accept: str) -> None:
    from prometheus_client.exposition import choose_encoder

    encoder, _ = choose_encoder(accept)
    text = encoder(registry_for(*scenario())).decode()
    for family in ("celery_task_sent", "celery_task_queue_wait_seconds", "celery_worker_up",
                   "celery_queue_length", "celery_exporter_events"):
        assert re.search(rf"^# TYPE {family}(_total)? ", text, re.M), family

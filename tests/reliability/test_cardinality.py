"""Label injection and cardinality attacks: the exposition stays valid, series stay capped,
memory stays bounded.

In-process tests push a million distinct task names and a million distinct worker names
through the real state and collector; one test does the same, smaller, through a real
exporter process fed by a real Redis, and checks the scrape with `promtool check metrics`.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections import Counter

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from celery_events_exporter.collector import CeleryCollector
from celery_events_exporter.pipeline import Pipeline
from celery_events_exporter.state import State, StateConfig
from tests.reliability.conftest import promtool_check
from tests.support.events import envelope, publish
from tests.support.procs import exporter, wait_until
from tests.support.servers import redis_server

MILLION = 1_000_000
SUCCEEDED = 100_000  # worker-labelled counters: 100k distinct workers are plenty
BATCH = 10_000
CAP = 1_000

HOSTILE = ['quo"te', 'a\\"b', "new\nline", "cr\rlf\r\n", "back\\slash\\", "}", '{x="1"}',
           'name="evil",worker="x"', "tab\tbed", "nul\x00byte", "\u2028sep", "😀" * 50,
           "é" * 300, "x" * 1_000_000, " ", ""]


def _render(pipeline: Pipeline) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CeleryCollector(pipeline))
    return generate_latest(registry).decode()


def _series_per_family(text: str) -> Counter:
    """Distinct label sets per family (histogram buckets of one series count once)."""
    out: Counter = Counter()
    for family in text_string_to_metric_families(text):
        keys = {frozenset((k, v) for k, v in s.labels.items() if k not in ("le", "quantile"))
                for s in family.samples}
        out[family.name] = len(keys)
    return out


def _label_values(text: str) -> list[str]:
    return [v for family in text_string_to_metric_families(text) for s in family.samples
            for v in s.labels.values()]


def test_a_million_task_names_and_a_million_workers(promtool: str) -> None:
    state = State(StateConfig(max_series=CAP))
    pipeline = Pipeline(state)
    now = 1_700_000_000.0
    for start in range(0, MILLION, BATCH):
        now += 0.01
        ids = range(start, start + BATCH)
        pipeline.state.ingest([{"type": "task-sent", "uuid": f"t{i}", "name": f"app.task{i}",
                                "queue": f"q{i % 3}", "hostname": f"producer{i}@web",
                                "timestamp": now} for i in ids], now)
        pipeline.state.ingest([{"type": "worker-heartbeat", "hostname": f"celery@pod-{i}",
                                "timestamp": now, "freq": 2.0, "active": 1, "processed": 0}
                               for i in ids], now)
        if start < SUCCEEDED:
            pipeline.state.ingest([{"type": "task-succeeded", "uuid": f"t{i}",
                                    "hostname": f"celery@pod-{i}", "timestamp": now,
                                    "runtime": 0.1} for i in ids], now)
    cfg = state.config
    assert all(len(s.data) <= CAP for s in (*state.counters.values(),
                                            *state.histograms.values()))
    assert len(state.tasks) <= cfg.max_tasks
    assert len(state.workers) <= CAP
    dropped = state.series_dropped
    assert dropped["task_sent_total"] == MILLION - CAP
    assert dropped["task_succeeded_total"] == SUCCEEDED - CAP
    assert dropped["worker_up"] >= MILLION - CAP

    text = _render(pipeline)
    per_family = _series_per_family(text)
    promtool_check(promtool, text)
    worst = max(per_family.values())
    assert worst <= CAP, per_family.most_common(3)
    print(f"\n1M task names, 1M worker names (100k finishing tasks): "
          f"{sum(per_family.values())} series in "
          f"{len(per_family)} families, largest family {worst} (cap {CAP}), "
          f"{len(text) / 2**20:.1f} MiB exposition; tasks tracked {len(state.tasks)}, "
          f"workers tracked {len(state.workers)}")


def test_hostile_label_values_render_valid_and_capped(promtool: str) -> None:
    state = State()
    pipeline = Pipeline(state)
    now = 1_700_000_000.0
    limit = state.config.labels.max_length
    for n, text in enumerate(HOSTILE):
        now += 1
        events = [
            {"type": "task-sent", "uuid": f"u{n}", "name": text, "queue": text,
             "hostname": text, "timestamp": now},
            {"type": "worker-online", "hostname": text or "empty", "timestamp": now,
             "sw_ident": text, "sw_ver": text, "sw_sys": text},
            {"type": "task-received", "uuid": f"u{n}", "hostname": text or "empty",
             "timestamp": now},
            {"type": "task-started", "uuid": f"u{n}", "hostname": text or "empty",
             "timestamp": now},
            {"type": "task-failed", "uuid": f"u{n}", "hostname": text or "empty",
             "timestamp": now, "exception": f"{text}('boom')"},
            {"type": "task-revoked", "uuid": f"v{n}", "hostname": text or "empty",
             "timestamp": now, "name": text},
            {"type": text[:200] or "blank", "timestamp": now},
        ]
        pipeline.state.ingest(events, now)
    text = _render(pipeline)
    promtool_check(promtool, text)
    values = _label_values(text)
    assert values and max(len(v) for v in values) <= limit
    # The injected quotes and newlines came back as values, not as new labels or lines.
    assert any('quo"te' in v for v in values) and any("new\nline" in v for v in values)
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert all(name.startswith(("celery_", "python_", "process_")) for name in names)


def test_huge_names_do_not_pin_memory() -> None:
    """A hostile publisher sending 100 KB names, ids and hosts cannot make the state keep them:
    300 such events carry 90 MiB; what the state retains afterwards is measured."""
    state = State()
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(300):
            pad = "x" * 100_000
            state.ingest([
                {"type": "task-sent", "uuid": f"{i}{pad}", "name": f"{i}{pad}",
                 "queue": f"{i}{pad}", "hostname": f"{i}@{pad}", "timestamp": 1.0 + i},
                {"type": "task-sent", "uuid": f"ok{i}", "name": f"{i}{pad}",
                 "hostname": f"{i}@{pad}", "timestamp": 1.0 + i},
                {"type": "worker-heartbeat", "hostname": f"{i}@{pad}", "timestamp": 1.0 + i},
                {"type": f"{i}{pad}", "timestamp": 1.0 + i},
                {"type": "task-failed", "uuid": f"f{i}{pad}", "hostname": "w@h",
                 "timestamp": 1.0 + i, "exception": f"{pad}()"},
            ], 2.0 + i)
            del pad
        gc.collect()
        retained = (tracemalloc.get_traced_memory()[0] - base) / 2**20
    finally:
        tracemalloc.stop()
    print(f"\n300 events x 5 with 100 KB strings (~150 MiB input): state retains "
          f"{retained:.2f} MiB")
    assert retained < 5, f"{retained:.1f} MiB retained"


@pytest.mark.redis
def test_cardinality_attack_through_a_real_exporter(promtool: str) -> None:
    """100k distinct task names, 20k distinct worker names and the hostile strings, published
    to a real Redis; the real exporter's scrape stays valid and under --max-series."""
    cap = 500
    with redis_server() as server, exporter(server.url, "--max-series", str(cap),
                                             "--probe-interval", "0", "--no-inspect") as exp:
        client = redis.Redis(host="127.0.0.1", port=server.port)
        wait_until(lambda: exp.value("celery_exporter_broker_connected") == 1, 30,
                   what="broker_connected 1")
        sent = 0
        payloads = []
        now = 1_700_000_000.0
        for start in range(0, 100_000, 1000):
            events = [{"type": "task-sent", "uuid": f"a{i}", "name": f"attack.task{i}",
                       "queue": "default", "hostname": "web@h", "timestamp": now}
                      for i in range(start, start + 1000)]
            events += [{"type": "worker-heartbeat", "hostname": f"celery@attack-{i}",
                        "timestamp": now, "freq": 2.0}
                       for i in range(start // 5, start // 5 + 200)]
            payloads.append(envelope(events))
            sent += len(events)
        for n, text in enumerate(HOSTILE[:-3]):
            event = [{"type": "task-sent", "uuid": f"h{n}", "name": text[:50_000],
                      "queue": text[:50_000], "hostname": text[:50_000], "timestamp": now},
                     {"type": "worker-heartbeat", "hostname": text[:50_000] or "x",
                      "timestamp": now, "sw_ident": text[:50_000]}]
            payloads.append(envelope(event))
            sent += len(event)
        for chunk in range(0, len(payloads), 20):
            assert publish(client, payloads[chunk:chunk + 20]) == 1
        wait_until(lambda: exp.value("celery_exporter_events_total") >= sent, 60, 0.5,
                   what=f"{sent} events to be counted")
        text = exp.text()
        promtool_check(promtool, text)
        per_family = _series_per_family(text)
        celery_families = {k: v for k, v in per_family.items() if k.startswith("celery_")}
        assert max(celery_families.values()) <= cap, per_family.most_common(3)
        samples = exp.samples()
        dropped = {dict(k[1]).get("metric"): v for k, v in samples.items()
                   if k[0] == "celery_exporter_series_dropped_total" and v}
        assert dropped.get("celery_task_sent_total", 0) > 0
        assert dropped.get("celery_worker_up", 0) > 0
        assert max(len(v) for v in _label_values(text)) <= 128
        rss = exp.rss_mib()
        print(f"\nreal exporter, {sent} events with 100k task names and 20k worker names: "
              f"{sum(celery_families.values())} celery_ series, largest family "
              f"{max(celery_families.values())} (cap {cap}), dropped {dropped}, "
              f"RSS {rss:.1f} MiB")
        client.close()

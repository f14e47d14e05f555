"""High availability: two exporters on one broker, both scraped, give the answers of one.

Celery's event stream is fanout, so each replica sees every event and exports the same
series (told apart only by `instance`). One real Redis, real Celery workers under a load
(successes, failures, a worker killed, a queue nobody consumes), two exporters and one real
Prometheus with three jobs over them: `celery-both` scrapes both replicas, `celery-a` and
`celery-b` one each. Every Overview panel query (the dashboards generator's Overview for a
job selector, through dashboards.queries.panel_queries) and every alert expression
(alerts.rules.build with the job selector; the rules loaded into Prometheus once per job)
is evaluated at one instant for each job; then replica B is stopped and `celery-both` must
still answer as `celery-a` does.

Every answer must match; the only exception is an alert about one replica by design
(PER_REPLICA), which is checked to fire for the stopped replica alone.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_events_exporter.alerts.config import RulesConfig
from celery_events_exporter.alerts.rules import build as build_rules
from celery_events_exporter.dashboards import Options, build_all
from celery_events_exporter.dashboards.queries import panel_queries
from tests.support.procs import ExporterProc, Producer, WorkerProc, wait_until
from tests.support.servers import free_port, stop_proc, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
OVERVIEW = "celery-overview.json"
# Where the job name goes in the generated queries, filled in per Prometheus job.
JOB_HOLE = "{job}"
JOBS = {"both": ("a", "b"), "a": ("a",), "b": ("b",)}
# A queue the exporters probe that no worker consumes: CeleryQueueNoConsumers' condition.
ORPHAN = "orphan"
LOAD_SECONDS = 40
# After the load: a few probe intervals and scrapes (1 s each).
SETTLE_SECONDS = 5
# Two live workers x 2 slots, each with 2 more prefetched (multiplier 1): 10 leaves 2 queued.
BUSY_TASKS = 10
BUSY_SECONDS = 60.0
# Replicas scrape the same stream at different instants: a correct query agrees within
# this; a double count is off by 2x.
REL_TOL = 0.25
ABS_TOL = 0.05
# "Seconds since the last event" differs between replicas by up to a worker heartbeat
# (2 s) plus a scrape interval: not a double count.
TIME_TOL = 3.5
# Alerts that are about one replica by design: a replica that stops is worth a warning of its
# own (its instance label names it), while every other answer stays the same.
PER_REPLICA = {"alert:CeleryExporterDown:warning"}
# Panel queries that measure each replica itself, not the fleet: waits clamped for clock skew
# depend on each replica's own receive times (its per-host clock-offset estimates), so two
# replicas count different numbers of them. Compared for presence only.
OWN_MEASUREMENT = {"overview:Exporter problems#6"}

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.prometheus]


def job(name: str) -> str:
    return f"celery-{name}"


def overview_queries() -> dict[str, str]:
    """id -> PromQL with `{job}` where the job goes: the Overview as the generator builds it
    for a job selector naming the job, its panels' queries as Grafana would send them."""
    dashboard = build_all(Options(job_selector=f'job="{JOB_HOLE}"'))[OVERVIEW]
    out: dict[str, str] = {}
    for title, expr in panel_queries(dashboard, {"job": JOB_HOLE, "datasource": "prom"}):
        key = f"overview:{title}"
        n = sum(1 for k in out if k == key or k.startswith(key + "#"))
        out[key if n == 0 else f"{key}#{n + 1}"] = expr
    return out


def rules_for(name: str) -> dict[str, Any]:
    doc = build_rules(RulesConfig(job_selector=f'job="{job(name)}"'))
    for group in doc["groups"]:
        group["name"] = f"{group['name']}.{name}"
    return doc


def alert_queries() -> dict[str, dict[str, str]]:
    """id -> {job variant: expression}; alerts of one name are told apart by severity."""
    out: dict[str, dict[str, str]] = {}
    for name in JOBS:
        for group in rules_for(name)["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    key = f"alert:{rule['alert']}:{rule['labels'].get('severity', '')}"
                    out.setdefault(key, {})[name] = rule["expr"]
    return out


def cases() -> dict[str, dict[str, str]]:
    out = {k: {n: expr.replace(JOB_HOLE, job(n)) for n in JOBS}
           for k, expr in overview_queries().items()}
    out.update(alert_queries())
    return out


CASES = cases()


# --- Prometheus ---------------------------------------------------------------------------------

@dataclass
class Prometheus:
    port: int
    proc: subprocess.Popen | None = None

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"}))
        with urllib.request.urlopen(url, timeout=30) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        data = body["data"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]


@contextlib.contextmanager
def prometheus(targets: dict[str, int], workdir: Path) -> Iterator[Prometheus]:
    rule_files = []
    for name in JOBS:
        path = workdir / f"rules-{name}.yml"
        path.write_text(yaml.safe_dump(rules_for(name), sort_keys=False))
        rule_files.append(str(path))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                   "scrape_timeout": "1s"},
        "rule_files": rule_files,
        "scrape_configs": [
            {"job_name": job(name),
             "static_configs": [{"targets": [f"127.0.0.1:{targets[r]}" for r in replicas]}]}
            for name, replicas in JOBS.items()],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    with open(workdir / "prometheus.log", "ab") as log:
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=log, cwd=workdir)
    prom = Prometheus(port, proc)
    try:
        wait_for_port(port, 60, proc)
        yield prom
    finally:
        stop_proc(proc)


# --- the scenario -------------------------------------------------------------------------------

@dataclass
class Results:
    # phase -> case id -> job variant -> normalised result
    values: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


def normalise(result: list[dict[str, Any]]) -> dict[tuple, list[float]]:
    """Series keyed by their labels without `instance` (the replica), values as floats: a
    query that keeps one series per replica shows as a key with two values."""
    out: dict[tuple, list[float]] = {}
    for series in result:
        labels = tuple(sorted((k, v) for k, v in series["metric"].items()
                              if k not in ("instance", "job")))
        out.setdefault(labels, []).append(float(series["value"][1]))
    return out


def evaluate(prom: Prometheus, at: float, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    return {case: {n: normalise(prom.query(exprs[n], at)) for n in names}
            for case, exprs in CASES.items()}


def _load(producer: Producer, stop: threading.Event) -> None:
    """~20 tasks/s: 1 in 4 fails, a few sleep, one a second to the queue nobody consumes."""
    deadline = time.monotonic() + LOAD_SECONDS + 60
    for i in range(10_000):
        if stop.is_set() or time.monotonic() > deadline:
            return
        producer.send(3, "tests.add", (i, 1))
        producer.send(1, "tests.fail", ("value",))
        if i % 4 == 0:
            producer.send(1, "tests.sleep", (0.3,))
            producer.send(1, "tests.add", (i, 2), queue=ORPHAN)
        time.sleep(0.25)


@pytest.fixture(scope="module")
def results(redis_url: str) -> Iterator[Results]:
    # A database of the session's Redis of its own: fanout events stay within it.
    url = redis_url.rsplit("/", 1)[0] + "/11"
    workdir = Path(tempfile.mkdtemp(prefix="cee-ha-"))
    flags = ("--probe-interval", "1", "--inspect-interval", "5", "--worker-timeout", "6",
             "--queue", "default", "--queue", ORPHAN)
    replicas = {"a": ExporterProc(url, *flags), "b": ExporterProc(url, *flags)}
    workers = [WorkerProc(url, f"ha{i}@127.0.0.1", concurrency=2) for i in (1, 2, 3)]
    producer = Producer(url)
    stop = threading.Event()
    load = threading.Thread(target=_load, args=(producer, stop), daemon=True)
    out = Results()
    try:
        for replica in replicas.values():
            replica.start()
        for worker in workers:
            worker.start()
        wait_until(lambda: all(r.value("celery_worker_up") >= 3 for r in replicas.values()),
                   60, what="both replicas to see the three workers")
        with prometheus({k: r.port for k, r in replicas.items()}, workdir) as prom:
            load.start()
            time.sleep(LOAD_SECONDS / 2)
            # A worker lost without a goodbye: CeleryWorkerDown's condition.
            workers[2].kill()
            wait_until(lambda: all(r.value("celery_worker_up", worker=workers[2].name) == 0
                                   for r in replicas.values()),
                       60, what="both replicas to mark the killed worker down")
            time.sleep(LOAD_SECONDS / 2)
            # Gauges (queue lengths, lag, in-flight) settle once the load stops, so the two
            # replicas' probes and scrapes, taken at different instants, agree on them; the
            # rates' 1m windows still hold the load.
            stop.set()
            load.join(30)
            # Busy workers while the gauges are read: every slot running, every prefetch
            # buffer full and a few tasks left in the queue, so sums of worker and queue
            # gauges are not zero (a double count of zero would hide).
            producer.send(BUSY_TASKS, "tests.sleep", (BUSY_SECONDS,))
            time.sleep(SETTLE_SECONDS)
            at = time.time() - 1
            out.values["both up"] = evaluate(prom, at, tuple(JOBS))
            replicas["b"].stop()
            time.sleep(5)  # a few scrapes: B's series go stale in celery-both
            at = time.time() - 1
            out.values["b down"] = evaluate(prom, at, ("both", "a"))
        yield out
    finally:
        stop.set()
        load.join(30)
        for worker in workers:
            worker.kill()  # they run BUSY_SECONDS sleeps: a warm shutdown would wait for them
        for replica in replicas.values():
            replica.stop()
        producer.close()


def _close(x: float, y: float, abs_tol: float) -> bool:
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return math.isclose(x, y, rel_tol=REL_TOL, abs_tol=abs_tol)


def differences(ours: dict[tuple, list[float]], theirs: dict[tuple, list[float]],
                abs_tol: float | None = ABS_TOL) -> list[str]:
    out = []
    for labels in sorted(set(ours) | set(theirs)):
        a, b = ours.get(labels, []), theirs.get(labels, [])
        if len(a) != len(b):
            out.append(f"{dict(labels)}: {len(a)} series vs {len(b)}")
        elif abs_tol is not None and \
                not all(_close(x, y, abs_tol) for x, y in zip(sorted(a), sorted(b), strict=True)):
            out.append(f"{dict(labels)}: {a} vs {b}")
    return out


COMPARISONS = (("both up", "both", "a"), ("both up", "both", "b"), ("b down", "both", "a"))


def _params() -> list[Any]:
    params = []
    for case in CASES:
        for phase, ours, theirs in COMPARISONS:
            case_id = f"{case}|{phase}:{ours}={theirs}"
            if case in PER_REPLICA and phase == "b down":
                continue
            params.append(pytest.param(case, phase, ours, theirs, id=case_id))
    return params


@pytest.mark.parametrize(("case", "phase", "ours", "theirs"), _params())
def test_two_replicas_answer_as_one(results: Results, case: str, phase: str, ours: str,
                                    theirs: str) -> None:
    got = results.values[phase][case]
    tol = TIME_TOL if "time()" in CASES[case][ours] else ABS_TOL
    if case in OWN_MEASUREMENT:
        tol = None  # the same series on both sides; values are each replica's own
    assert set(CASES) >= OWN_MEASUREMENT, sorted(OWN_MEASUREMENT - set(CASES))
    assert differences(got[ours], got[theirs], tol) == []


def test_the_load_makes_the_queries_answer(results: Results) -> None:
    """Not a vacuous comparison: under this load the key series are there."""
    answered = [case for case, by_job in results.values["both up"].items() if by_job["a"]]
    for must in ("alert:CeleryWorkerDown:warning", "alert:CeleryQueueNoConsumers:critical",
                 "alert:CeleryTaskFailureBudgetBurn:critical"):
        assert must in answered, sorted(answered)
    overview = [c for c in answered if c.startswith("overview:")]
    assert len(overview) >= len([c for c in CASES if c.startswith("overview:")]) // 2


def test_per_replica_alerts_name_cases_and_fire_for_the_stopped_replica(
        results: Results) -> None:
    """The comparisons skipped above are not silent: with B stopped, the per-replica alert
    names B alone in the pair's job and nothing in A's own job."""
    assert set(CASES) >= PER_REPLICA, sorted(PER_REPLICA - set(CASES))
    for case in PER_REPLICA:
        got = results.values["b down"][case]
        assert len(got["both"]) == 1 and not got["a"], got

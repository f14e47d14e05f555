"""A real Prometheus scrapes the real exporter with its own Accept header and ingests it.

Debian's Prometheus (2.42 here) asks for OpenMetrics first. Only the OpenMetrics body
carries `_created` samples, so finding `celery_task_succeeded_created` in Prometheus proves
the negotiation picked OpenMetrics; the target being up with no scrape error across several
scrapes proves Prometheus' own parser accepted every byte of it.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from tests.support.events import envelope, publish
from tests.support.procs import exporter, wait_until
from tests.support.servers import free_port, stop_proc, wait_for_port
from tests.test_state import lifecycle

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"

pytestmark = [pytest.mark.redis, pytest.mark.prometheus, pytest.mark.slow]


@contextlib.contextmanager
def prometheus(target_port: int, *flags: str) -> Iterator[str]:
    """A private Prometheus on 127.0.0.1 scraping the target every second; its base URL."""
    if not Path(PROMETHEUS).exists():
        pytest.fail("prometheus is required (apt-get install prometheus)")
    workdir = Path(tempfile.mkdtemp(prefix="cee-prometheus-"))
    port = free_port()
    (workdir / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: celery\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target_port}']\n")
    with open(workdir / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", *flags],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        wait_for_port(port, 30, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_proc(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def query(base: str, promql: str) -> list[dict]:
    reply = requests.get(f"{base}/api/v1/query", params={"query": promql}, timeout=10)
    reply.raise_for_status()
    return reply.json()["data"]["result"]


def target(base: str) -> dict:
    reply = requests.get(f"{base}/api/v1/targets", timeout=10)
    reply.raise_for_status()
    targets = reply.json()["data"]["activeTargets"]
    assert len(targets) <= 1, targets
    return targets[0] if targets else {"health": "unknown"}  # before discovery


def publish_tasks(redis_url: str, count: int) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        now = time.time()
        events = []
        for i in range(count):
            events += lifecycle(f"prom-{i}", now - 5 + i * 0.01, name=f"app.job_{i % 3}")
        publish(client, [envelope([e]) for e in events])
    finally:
        client.close()


def scraped_cleanly(base: str, scrapes: int = 3) -> dict:
    """The target after `scrapes` more scrapes, each of them up with no error."""
    seen: list[str] = []

    def next_scrape() -> dict | None:
        t = target(base)
        if t["health"] != "up" or t["lastError"]:
            raise AssertionError(f"scrape failed: {t['health']} {t['lastError']!r}")
        if not seen or t["lastScrape"] != seen[-1]:
            seen.append(t["lastScrape"])
        return t if len(seen) > scrapes else None

    return wait_until(next_scrape, 60, what=f"{scrapes} clean scrapes")


def test_prometheus_ingests_the_openmetrics_scrape(redis_url: str) -> None:
    with exporter(redis_url, "--probe-interval", "0", "--no-inspect") as exp:
        publish_tasks(redis_url, 30)
        wait_until(lambda: exp.value("celery_task_succeeded_total") >= 30, 30,
                   what="the exporter to count the tasks")
        with prometheus(exp.port) as base:
            wait_until(lambda: target(base)["health"] != "unknown", 60, what="a first scrape")
            scraped_cleanly(base)
            assert query(base, 'up{job="celery"}')[0]["value"][1] == "1"
            succeeded = query(base, "sum(celery_task_succeeded_total)")
            assert float(succeeded[0]["value"][1]) == 30
            created = query(base, "celery_task_succeeded_created")
            assert len(created) == 3, "OpenMetrics was not negotiated (no _created series)"
            assert all(abs(float(s["value"][1]) - time.time()) < 600 for s in created)
            buckets = query(base, 'celery_task_runtime_seconds_bucket{le="+Inf"}')
            assert sum(float(s["value"][1]) for s in buckets) == 30


def test_prometheus_stores_the_task_ids_of_bucket_exemplars(redis_url: str) -> None:
    with exporter(redis_url, "--probe-interval", "0", "--no-inspect") as exp:
        publish_tasks(redis_url, 12)
        wait_until(lambda: exp.value("celery_task_succeeded_total") >= 12, 30,
                   what="the exporter to count the tasks")
        with prometheus(exp.port, "--enable-feature=exemplar-storage") as base:
            wait_until(lambda: target(base)["health"] != "unknown", 60, what="a first scrape")
            scraped_cleanly(base)

            def exemplars() -> list[dict]:
                reply = requests.get(f"{base}/api/v1/query_exemplars", timeout=10, params={
                    "query": "celery_task_runtime_seconds_bucket",
                    "start": time.time() - 600, "end": time.time() + 60})
                reply.raise_for_status()
                return reply.json()["data"]

            series = wait_until(exemplars, 30, what="exemplars in Prometheus")
            ids = {e["labels"]["task_id"] for s in series for e in s["exemplars"]}
            # lifecycle(): every runtime is 0.5 s, one bucket per task name: the latest task
            # of each of the 3 names is that bucket's exemplar.
            assert ids == {"prom-9", "prom-10", "prom-11"}, series
            assert {s["seriesLabels"]["le"] for s in series} == {"0.5"}

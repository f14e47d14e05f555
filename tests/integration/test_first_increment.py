"""A stock Prometheus sees the first increment of a brand-new counter series.

A counter that springs into existence at 1 has no earlier sample, so `increase()` and
`rate()` read it as no change: the first failure of a new worker or exception class would
never reach the failure alerts. The exporter shows a new series at 0 on its first scrape;
here a real Prometheus (Debian's, 1 s scrapes, private data dir, stopped by pid) scrapes
the real exporter while a real worker fails one task.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.integration.harness import Broker, Exporter, Procs, Worker, http_get, producer
from tests.support.servers import free_port

pytestmark = pytest.mark.slow
PROMETHEUS = "/usr/bin/prometheus"


class Prometheus:
    def __init__(self, procs: Procs, tmp: Path, target_port: int) -> None:
        self.port = free_port()
        config = tmp / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: celery\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n")
        self.proc = procs.spawn("prometheus", [
            PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}"])
        self.base = f"http://127.0.0.1:{self.port}"

    def query(self, expr: str) -> list[dict]:
        code, text = http_get(f"{self.base}/api/v1/query?"
                              + urllib.parse.urlencode({"query": expr}))
        assert code == 200, text[:500]
        return json.loads(text)["data"]["result"]

    def wait_value(self, expr: str, ok, what: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        last: list[dict] = []
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise AssertionError(f"prometheus exited: {self.proc.log.read_text()[-2000:]}")
            try:
                last = self.query(expr)
            except OSError:  # not listening yet
                last = []
            if last and ok(float(last[0]["value"][1])):
                return float(last[0]["value"][1])
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}: {expr} = {last}")


@pytest.mark.skipif(not shutil.which(PROMETHEUS), reason="needs Debian's prometheus")
def test_first_failure_of_a_new_series_shows_in_increase(
        redis_broker: Broker, procs: Procs, tmp_path: Path) -> None:
    exporter = Exporter(procs, redis_broker)
    node = Worker(procs, redis_broker, "first", concurrency=1).node
    exporter.wait_up(node)
    prom = Prometheus(procs, tmp_path, exporter.port)
    prom.wait_value('up{job="celery"}', lambda v: v == 1, "the exporter scraped", 30)
    # A few scrapes of the exporter before the failure, as in production.
    prom.wait_value('count_over_time(up{job="celery"}[1m])', lambda v: v >= 3,
                    "three scrapes", 30)
    with producer(redis_broker) as p:
        p.send("tests.fail", "key")
    # From here on only Prometheus scrapes the exporter: a scrape of ours would be the
    # one that shows the new series at 0.
    series = f'celery_task_failed_total{{name="tests.fail",worker="{node}",exception="KeyError"}}'
    prom.wait_value(series, lambda v: v == 1, "the failure counted", 45)
    seen = prom.wait_value(f"increase({series}[1m])", lambda v: v >= 0.9,
                           "the first failure in increase()", 20)
    assert seen >= 0.9

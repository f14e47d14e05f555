#!/usr/bin/env python3
"""Scrape latency at 10k series while ingesting, and proof that scrapes do not stall ingest.

1. A private redis-server and our exporter (default flags, probes off).
2. Populate: every (task name, queue, worker) of --names x 3 queues x 4 workers gets
   finished tasks, which makes ~11k exposition lines with --names 50.
3. Flood through Celery's EventDispatcher flat out while scraping /metrics every
   --interval s; only scrapes that saw at least --min-series series count.
4. Wait for every published task to be counted: a scrape that blocked ingest would show
   as lost events (Redis is unlimited here, so nothing is dropped for being slow).

Prints one JSON line (scrape ms median/p95/max during ingest and when idle, series).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REPO, load, redis_server, scrape, series_count, started, sum_metric

PUBLISH = str(REPO / "benchmarks" / "publish.py")
DONE = ("celery_task_succeeded_total", "celery_task_failed_total")


def done(text: str) -> float:
    return sum(sum_metric(text, name) for name in DONE)


def wait_done(url: str, target: float, stall: float = 15.0, limit: float = 600.0) -> float:
    last, changed = -1.0, time.monotonic()
    deadline = time.monotonic() + limit
    value = 0.0
    while time.monotonic() < deadline:
        value = done(scrape(url)[0])
        if value >= target:
            break
        if value != last:
            last, changed = value, time.monotonic()
        elif time.monotonic() - changed > stall:
            break
        time.sleep(0.25)
    return value


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def run(n: int = 20000, names: int = 50, interval: float = 0.2, min_series: int = 10000,
        log: str = os.devnull) -> dict:
    res: dict = {"part": "scrape", "n": n, "names": names, "load_before": load()}
    combos = names * 3 * 4
    with redis_server("--client-output-buffer-limit", "pubsub 0 0 0") as srv, \
            started(srv.url, log=log) as exp:
        exp.wait_ready()
        base = ["--broker", srv.url, "--names", str(names), "--spread", "--max-seconds", "300"]
        subprocess.run([sys.executable, PUBLISH, "--via", "raw", "-n", str(2 * combos), *base],
                       check=True, capture_output=True, timeout=600)
        populated = wait_done(exp.url, 2 * combos)
        text, _ = scrape(exp.url)
        res["series_populated"] = series_count(text)
        target = populated + n
        busy: list[float] = []
        seen: list[int] = []
        pub = subprocess.Popen([sys.executable, PUBLISH, "--via", "celery", "-n", str(n), *base],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        t0 = time.time()
        try:
            deadline = time.monotonic() + 600
            while pub.poll() is None and time.monotonic() < deadline:
                text, lat = scrape(exp.url)
                count = series_count(text)
                seen.append(count)
                if count >= min_series:
                    busy.append(lat * 1000)
                time.sleep(interval)
            out, _ = pub.communicate(timeout=60)
        finally:
            if pub.poll() is None:
                pub.kill()
                pub.wait(10)
        published = json.loads(out.decode().strip().splitlines()[-1])
        final = wait_done(exp.url, target)
        elapsed = time.time() - t0
        idle = []
        for _ in range(10):
            text, lat = scrape(exp.url)
            idle.append(lat * 1000)
        st = exp.stats() or {}
    res.update(
        series=series_count(text), metrics_bytes=len(text.encode()),
        scrapes_during_ingest=len(busy),
        scrape_ms_busy_median=busy and round(statistics.median(busy), 1),
        scrape_ms_busy_p95=busy and round(pct(busy, 0.95), 1),
        scrape_ms_busy_max=busy and round(max(busy), 1),
        scrape_ms_idle_median=round(statistics.median(idle), 1),
        published_events_per_s=published.get("events_per_s"),
        ingested_events_per_s=round(4 * (final - populated) / elapsed, 1),
        lost=int(target - final), rss_mib=round(st.get("VmRSS", 0), 1),
        load_after=load())
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=20000, help="tasks published while scraping")
    p.add_argument("--names", type=int, default=50, help="task names (x 3 queues x 4 workers)")
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--min-series", type=int, default=10000)
    p.add_argument("--log", default=os.devnull)
    a = p.parse_args(argv)
    print(json.dumps(run(a.n, a.names, a.interval, a.min_series, a.log)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Scrape latency at 10k series while ingesting, and proof that scrapes do not stall ingest.

1. A private redis-server and our exporter (default flags, probes off).
2. Populate: every (task name, queue, worker) of --names x 3 queues x 4 workers gets
   finished tasks, which makes ~11k exposition lines with --names 50.
3. Flood through Celery's EventDispatcher flat out while scraping /metrics every
   --interval s, in each round once per format, side by side: the text format (no Accept
   header), and what Prometheus 2.x and 3.x ask for (OpenMetrics; see _common.ACCEPT);
   only rounds whose text scrape saw at least --min-series series count.
4. Wait for every published task to be counted: a scrape that blocked ingest would show
   as lost events (Redis is unlimited here, so nothing is dropped for being slow).

Prints one JSON line (per format: scrape ms median/p95/max during ingest and when idle;
series, and the OpenMetrics/text ratio of the medians).
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
from _common import ACCEPT, REPO, load, redis_server, scrape, series_count, started, sum_metric

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


def run(n: int = 20000, names: int = 50, interval: float = 1.0, min_series: int = 10000,
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
        busy: dict[str, list[float]] = {fmt: [] for fmt in ACCEPT}
        formats = list(ACCEPT)
        sizes: dict[str, int] = {}
        rounds = 0
        pub = subprocess.Popen([sys.executable, PUBLISH, "--via", "celery", "-n", str(n), *base],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        t0 = time.time()
        try:
            deadline = time.monotonic() + 600
            while pub.poll() is None and time.monotonic() < deadline:
                rounds += 1
                # Each format goes first in turn: none profits from the others' warm caches.
                order = formats[rounds % 3:] + formats[:rounds % 3]
                got = {fmt: scrape(exp.url, accept=ACCEPT[fmt]) for fmt in order}
                if series_count(got["text"][0]) >= min_series:
                    for fmt, (body, lat) in got.items():
                        busy[fmt].append(lat * 1000)
                        sizes[fmt] = len(body.encode())
                time.sleep(interval)
            out, _ = pub.communicate(timeout=60)
        finally:
            if pub.poll() is None:
                pub.kill()
                pub.wait(10)
        published = json.loads(out.decode().strip().splitlines()[-1])
        final = wait_done(exp.url, target)
        elapsed = time.time() - t0
        idle: dict[str, list[float]] = {fmt: [] for fmt in ACCEPT}
        for i in range(30):
            fmt = formats[i % 3]
            text, lat = scrape(exp.url, accept=ACCEPT[fmt])
            idle[fmt].append(lat * 1000)
        text, _ = scrape(exp.url)
        st = exp.stats() or {}
    res.update(series=series_count(text), metrics_bytes=len(text.encode()),
               scrapes_during_ingest=len(busy["text"]), scrape_interval_s=interval)
    for fmt in ACCEPT:
        b = busy[fmt]
        res[fmt] = dict(
            busy_median=round(statistics.median(b), 1) if b else None,
            busy_p95=round(pct(b, 0.95), 1) if b else None,  # type: ignore[arg-type]
            busy_max=round(max(b), 1) if b else None,
            idle_median=round(statistics.median(idle[fmt]), 1),
            bytes=sizes.get(fmt))
    for fmt in ("prometheus-2", "prometheus-3"):
        for when in ("busy_median", "idle_median"):
            if res["text"][when] and res[fmt][when]:
                res[fmt][when.replace("median", "ratio_to_text")] = round(
                    res[fmt][when] / res["text"][when], 2)
    # the figures earlier reports carried, kept for the text format
    res.update(scrape_ms_busy_median=res["text"]["busy_median"],
               scrape_ms_busy_p95=res["text"]["busy_p95"],
               scrape_ms_busy_max=res["text"]["busy_max"],
               scrape_ms_idle_median=res["text"]["idle_median"],
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
    p.add_argument("--interval", type=float, default=1.0,
                   help="seconds between rounds (a round scrapes each format once)")
    p.add_argument("--min-series", type=int, default=10000)
    p.add_argument("--log", default=os.devnull)
    a = p.parse_args(argv)
    print(json.dumps(run(a.n, a.names, a.interval, a.min_series, a.log)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

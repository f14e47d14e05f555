#!/usr/bin/env python3
"""Measure the exporter's RSS and CPU at steady event rates: the figures behind the requests.

For each --rate (events/s): a private redis-server, our exporter (probes off), the benchmark
publisher (benchmarks/publish.py, Celery's EventDispatcher) at that rate for --seconds, and a
scrape every 15 s as Prometheus would. Samples /proc/PID every second and prints one JSON
line per rate: RSS at start, at the end and peak (VmHWM) in MiB, mean CPU in millicores
over the run, events/s the exporter counted. generate.py's RESOURCES cites these figures.

    .venv/bin/python deploy/kubernetes/sizing.py --rate 500 --rate 5000 --seconds 60
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from _common import scrape, started, sum_metric  # noqa: E402

from tests.support.servers import redis_server  # noqa: E402

# publish.py's four task events (sent, received, started, succeeded/failed) per task.
EVENTS_PER_TASK = 4
COUNTED = ("celery_task_succeeded_total", "celery_task_failed_total")


def measure(rate: float, seconds: float) -> dict[str, float]:
    with redis_server() as redis, started(redis.url) as exp:
        exp.wait_ready()
        before = exp.stats() or {}
        tasks = int(rate * seconds / EVENTS_PER_TASK)
        pub = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "publish.py"),
                                "--broker", redis.url, "-n", str(tasks), "--rate", str(rate),
                                "--names", "50", "--max-seconds", str(seconds * 2)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0, last_scrape, rss_max = time.monotonic(), 0.0, 0.0
        try:
            while pub.poll() is None and time.monotonic() - t0 < seconds * 2 + 30:
                stats = exp.stats() or {}
                rss_max = max(rss_max, stats.get("VmRSS", 0.0))
                if time.monotonic() - last_scrape >= 15:
                    scrape(exp.url)
                    last_scrape = time.monotonic()
                time.sleep(1)
        finally:
            if pub.poll() is None:
                pub.kill()
            pub.wait()
        elapsed = time.monotonic() - t0
        after = exp.stats() or {}
        text, _ = scrape(exp.url)
        counted = sum(sum_metric(text, name) for name in COUNTED)
    return {
        "rate_target": rate, "seconds": round(elapsed, 1),
        "tasks_counted": counted, "tasks_planned": tasks,
        # What the exporter saw: a loaded machine's publisher may not reach the target.
        "events_per_s": round(counted * EVENTS_PER_TASK / elapsed),
        "rss_start_mib": round(before.get("VmRSS", 0.0), 1),
        "rss_end_mib": round(after.get("VmRSS", 0.0), 1),
        "rss_peak_mib": round(max(after.get("VmHWM", 0.0), rss_max), 1),
        "cpu_millicores": round(1000 * (after.get("cpu_s", 0.0) - before.get("cpu_s", 0.0))
                                / elapsed, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--rate", type=float, action="append", help="events/s (repeatable)")
    p.add_argument("--seconds", type=float, default=60.0)
    a = p.parse_args()
    for rate in a.rate or [500.0, 5000.0]:
        print(json.dumps(measure(rate, a.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

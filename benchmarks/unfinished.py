#!/usr/bin/env python3
"""Memory with tasks that never finish: the in-flight table must stay at its cap.

Publishes -n tasks that get task-sent and task-started but no terminal event (as when a
worker is killed, or terminal events are lost), into our exporter with --max-tasks CAP;
`--events sent` publishes task-sent alone instead: a million messages waiting in queues
that no worker receives (the incidents' oldest-waiting structure must stay bounded too).
Samples the exporter's RSS while it ingests; checks celery_exporter_tasks_tracked never
passes the cap and that evictions account for the rest.

Uses publish.py --via raw (kombu's exact envelope, PUBLISHed in pipelines) so a million
tasks take about a minute. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REPO, load, redis_server, scrape, started, sum_metric

PUBLISH = str(REPO / "benchmarks" / "publish.py")


def run(n: int = 1_000_000, cap: int = 100_000, log: str = os.devnull,
        limit: float = 900.0, events: str = "sent,started") -> dict:
    res: dict = {"part": "unfinished", "n": n, "max_tasks": cap, "events": events,
                 "load_before": load()}
    last_type = "task-" + events.split(",")[-1]
    with redis_server("--client-output-buffer-limit", "pubsub 0 0 0") as srv, \
            started(srv.url, "--max-tasks", str(cap), log=log) as exp:
        exp.wait_ready()
        rss0 = (exp.stats() or {}).get("VmRSS", 0)
        pub = subprocess.Popen(
            [sys.executable, PUBLISH, "--broker", srv.url, "--via", "raw", "-n", str(n),
             "--events", events, "--max-seconds", str(limit)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        max_rss, max_tracked, rss_at_cap = 0.0, 0.0, None
        started_count = last = 0.0
        changed = time.monotonic()
        try:
            while time.monotonic() - t0 < limit:
                text, _ = scrape(exp.url)
                tracked = sum_metric(text, "celery_exporter_tasks_tracked")
                started_count = sum_metric(text, "celery_exporter_events_total",
                                           type=last_type)
                st = exp.stats() or {}
                max_rss = max(max_rss, st.get("VmRSS", 0))
                max_tracked = max(max_tracked, tracked)
                if rss_at_cap is None and tracked >= cap:
                    rss_at_cap = st.get("VmRSS")
                if started_count >= n:
                    break
                if started_count != last:
                    last, changed = started_count, time.monotonic()
                elif pub.poll() is not None and time.monotonic() - changed > 15:
                    break
                time.sleep(0.5)
            out, _ = pub.communicate(timeout=limit)
        finally:
            if pub.poll() is None:
                pub.kill()
                pub.wait(10)
        elapsed = time.monotonic() - t0
        text, _ = scrape(exp.url)
        st = exp.stats() or {}
    published = json.loads(out.decode().strip().splitlines()[-1])
    res.update(
        published_events=published.get("events"),
        ingested_tasks=int(started_count), seconds=round(elapsed, 1),
        tasks_tracked_max=int(max_tracked),
        tasks_tracked_final=int(sum_metric(text, "celery_exporter_tasks_tracked")),
        evicted_capacity=int(sum_metric(text, "celery_exporter_tasks_evicted_total",
                                        reason="capacity")),
        rss_start_mib=round(rss0, 1), rss_at_cap_mib=rss_at_cap and round(rss_at_cap, 1),
        rss_max_mib=round(max_rss, 1), rss_final_mib=round(st.get("VmRSS", 0), 1),
        hwm_mib=round(st.get("VmHWM", 0), 1), within_cap=max_tracked <= cap,
        load_after=load())
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=1_000_000)
    p.add_argument("--max-tasks", type=int, default=100_000, help="the exporter's cap")
    p.add_argument("--log", default=os.devnull)
    p.add_argument("--events", default="sent,started", choices=("sent,started", "sent"),
                   help="the events each task gets")
    a = p.parse_args(argv)
    print(json.dumps(run(a.n, a.max_tasks, a.log, events=a.events)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

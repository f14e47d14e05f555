#!/usr/bin/env python3
"""A forced disconnect in the middle of a flood: how fast we are back, and is it reported?

Starts a private redis-server and our exporter, floods -n tasks (flood.py, 2 processes)
and, a moment in, has Redis drop every pub/sub client (CLIENT KILL TYPE pubsub: what
Redis does to a subscriber past client-output-buffer-limit). Measures how long until our
subscription is back (Redis CLIENT LIST), what the exporter's own metrics say
(celery_exporter_broker_reconnects_total, _broker_connected) and log says, and how many
tasks' terminal events fell in the gap (lost, reported, not hidden).

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import HARNESS, load, redis_server, scrape, started, sum_metric


def subscribers(r: redis.Redis) -> set[str]:
    return {c["id"] for c in r.client_list() if int(c.get("psub", 0)) or int(c.get("sub", 0))}


def done(url: str) -> float:
    text, _ = scrape(url)
    return (sum_metric(text, "celery_task_succeeded_total")
            + sum_metric(text, "celery_task_failed_total"))


def run(n: int = 40_000, kill_after: float = 1.0, log: str = "disconnect.log") -> dict:
    res: dict = {"part": "disconnect", "n": n, "load_before": load()}
    with redis_server() as srv, started(srv.url, log=log) as exp:
        exp.wait_ready()
        r = redis.Redis(host="127.0.0.1", port=srv.port, socket_timeout=10)
        deadline = time.monotonic() + 30
        while not subscribers(r) and time.monotonic() < deadline:
            time.sleep(0.05)
        before = subscribers(r)
        base = done(exp.url)
        base_events = sum_metric(scrape(exp.url)[0], "celery_exporter_events_total")
        flood = subprocess.Popen([sys.executable, str(HARNESS / "flood.py"), "--broker", srv.url,
                                  "-n", str(n), "--procs", "2", "--pipeline", "200"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            time.sleep(kill_after)
            killed_at = time.monotonic()
            killed = r.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            back = None
            while time.monotonic() - killed_at < 60:
                if subscribers(r) - before:
                    back = time.monotonic() - killed_at
                    break
                time.sleep(0.002)
            out, _ = flood.communicate(timeout=600)
        finally:
            if flood.poll() is None:
                flood.kill()
                flood.wait(10)
        published = json.loads(out.decode().strip().splitlines()[-1])
        last, changed = -1.0, time.monotonic()
        value = base
        while time.monotonic() - changed < 5 and value - base < n:
            value = done(exp.url)
            if value != last:
                last, changed = value, time.monotonic()
            time.sleep(0.2)
        text, _ = scrape(exp.url)
        r.close()
    with open(log, errors="replace") as f:
        gap_lines = [line.strip() for line in f if "events published in the gap" in line
                     or "lost or could not open broker connection" in line]
    res.update(
        clients_killed=killed, resubscribed_after_s=back and round(back, 3),
        publisher_events_per_s=published.get("events_per_s"),
        lost_tasks=int(n - (value - base)),
        lost_events=int(published.get("events", 0)
                        - (sum_metric(text, "celery_exporter_events_total") - base_events)),
        reconnects_total=sum_metric(text, "celery_exporter_broker_reconnects_total"),
        connected=sum_metric(text, "celery_exporter_broker_connected"),
        log_lines=gap_lines[-2:], load_after=load())
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=40_000)
    p.add_argument("--kill-after", type=float, default=1.0)
    p.add_argument("--log", default="disconnect.log")
    a = p.parse_args(argv)
    print(json.dumps(run(a.n, a.kill_after, a.log)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

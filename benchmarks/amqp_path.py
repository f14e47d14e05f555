#!/usr/bin/env python3
"""The AMQP (kombu) path: CPU per ingested event against a private RabbitMQ node.

Boots a private RabbitMQ (tests/support/servers.py: own node name, ports and data dir,
stopped by pid), starts our exporter on it (kombu consumer: its own auto-delete queue
bound to the celeryev topic exchange), publishes -n tasks (4 events each: sent, received,
started, succeeded or 1 in 10 failed) through Celery's EventDispatcher flat out from
--procs processes, and waits until every task is counted. --burst stops the exporter
(SIGSTOP) while publishing and times the drain of the queued backlog. With --via-redis it
runs the same against a private redis-server with `--ingest kombu`, for reference.
--side-by-side runs, in one go and with the same publisher: the Redis fast path on a
private redis-server, our lean AMQP consumer (exporter/ingest/amqp.py) and the kombu
consumer (`--ingest kombu`) on one private RabbitMQ, so the ratios share the machine's
load. --rate paces the publishers (events/s in total; 0 = flat out).

Prints one JSON line: events/s, exporter CPU µs per event, lost tasks, RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REPO, load, redis_server, scrape, started, sum_metric

from tests.support.servers import rabbit_server

PUBLISH = str(REPO / "benchmarks" / "publish.py")


def done(url: str) -> float:
    text, _ = scrape(url)
    return (sum_metric(text, "celery_task_succeeded_total")
            + sum_metric(text, "celery_task_failed_total"))


def measure(broker: str, n: int, extra: tuple[str, ...], log: str, label: str,
            procs: int = 2, burst: bool = False, rate: float = 0.0) -> dict:
    res: dict = {"part": "amqp", "label": label + ("-burst" if burst else ""), "n": n,
                 "burst": burst, "rate": rate, "load_before": load()}
    pace = ("--rate", str(rate / procs)) if rate else ()
    with started(broker, *extra, log=log) as exp:
        exp.wait_ready()
        time.sleep(1.0)
        base = done(exp.url)
        st0 = exp.stats() or {}
        if burst:  # hold the exporter while the queue fills: pure drain cost, no wake-ups
            os.kill(exp.pid, signal.SIGSTOP)
        t0 = time.time()
        pubs = [subprocess.Popen([sys.executable, PUBLISH, "--broker", broker,
                                  "-n", str(n // procs + (i < n % procs)), "--seed", str(i + 1),
                                  "--max-seconds", "600", *pace],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for i in range(procs)]
        rate = 0.0
        for pub in pubs:
            out, err = pub.communicate(timeout=900)
            if pub.returncode:
                raise RuntimeError(f"publisher failed: {err.decode()[-1500:]}")
            rate += json.loads(out.decode().strip().splitlines()[-1])["events_per_s"]
        if burst:
            os.kill(exp.pid, signal.SIGCONT)
            t0 = time.time()
        value, last, changed = base, -1.0, time.monotonic()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            value = done(exp.url)
            if value - base >= n:
                break
            if value != last:
                last, changed = value, time.monotonic()
            elif time.monotonic() - changed > 15:
                break
            time.sleep(0.2)
        t1 = time.time()
        st1 = exp.stats() or {}
    finished = value - base
    events = 4 * finished
    cpu = st1.get("cpu_s", 0) - st0.get("cpu_s", 0)
    res.update(done=int(finished), lost=int(n - finished),
               published_events_per_s=round(rate, 1), publishers=procs,
               events_per_s=round(events / max(t1 - t0, 1e-9), 1),
               cpu_s=round(cpu, 2), cpu_us_per_event=round(cpu / max(events, 1) * 1e6, 1),
               rss_mib=round(st1.get("VmRSS", 0), 1), load_after=load())
    return res


def run(n: int = 20000, log: str = os.devnull, via_redis: bool = False, procs: int = 2,
        burst: bool = False) -> dict:
    if via_redis:
        with redis_server("--client-output-buffer-limit", "pubsub 0 0 0") as srv:
            return measure(srv.url, n, ("--ingest", "kombu"), log, "ours-kombu-on-redis",
                           procs, burst)
    url = os.environ.get("CEE_TEST_AMQP_URL")
    if url:
        return measure(url, n, (), log, "ours-amqp", procs, burst)
    with rabbit_server() as server:
        return measure(server.url, n, (), log, "ours-amqp", procs, burst)


def side_by_side(n: int = 20000, log: str = os.devnull, procs: int = 2,
                 rate: float = 0.0, burst: bool = False) -> list[dict]:
    """Redis fast path, lean AMQP consumer, kombu consumer on AMQP: one run, one machine."""
    rows = []
    with redis_server("--client-output-buffer-limit", "pubsub 0 0 0") as srv:
        rows.append(measure(srv.url, n, (), log, "ours-redis", procs, burst, rate))
    with rabbit_server() as server:
        rows.append(measure(server.url, n, (), log, "ours-amqp", procs, burst, rate))
        rows.append(measure(server.url, n, ("--ingest", "kombu"), log, "ours-amqp-kombu",
                            procs, burst, rate))
    redis_us = rows[0]["cpu_us_per_event"] or 1e-9
    for row in rows:
        row["x_redis"] = round(row["cpu_us_per_event"] / redis_us, 2)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=20000)
    p.add_argument("--via-redis", action="store_true",
                   help="the kombu path on a private Redis instead (reference)")
    p.add_argument("--procs", type=int, default=2, help="publisher processes")
    p.add_argument("--burst", action="store_true",
                   help="stop the exporter (SIGSTOP) while publishing, then time the drain")
    p.add_argument("--side-by-side", action="store_true",
                   help="Redis fast path, lean AMQP and kombu-on-AMQP in one run")
    p.add_argument("--rate", type=float, default=0.0,
                   help="with --side-by-side: events/s in total across publishers, 0 = flat out")
    p.add_argument("--log", default=os.devnull)
    a = p.parse_args(argv)
    if a.side_by_side:
        for row in side_by_side(a.n, a.log, a.procs, a.rate, a.burst):
            print(json.dumps(row), flush=True)
        return 0
    print(json.dumps(run(a.n, a.log, a.via_redis, a.procs, a.burst)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Everyday event rates: one event per Redis message, evenly paced, side by side.

A flood packs hundreds of events into each socket read; a real fleet publishes a few
hundred to a few thousand events per second, each its own PUBLISH, so there every message
can cost a wake-up. For each --rates R and each system in turn (the same private
redis-server, Redis' default pub/sub output buffer limits):

1. start the system, wait until it serves /metrics and its subscription shows in Redis;
2. publish --seconds x R events, each its own PUBLISH of the kombu envelope (publish.py's
   raw_messages), due 1/R apart: prebuilt, written to a plain socket at their due time
   (a late one goes out at once), replies drained as they come;
3. one second after the publisher finishes, read the system's user+system CPU; only then
   scrape (scrapes in the window would be billed as ingest), and count what arrived.

CPU µs/event = CPU in the window / events published. Systems: ours; --peer-a
(prometheus-exporter-celery 0.11.2, its venv from benchmarks/run.py's cache); --ceiling
(benchmarks/harness/ceiling.py, a bare redis-py + json loop). Prints one JSON line per run.

    .venv/bin/python benchmarks/paced.py --rates 500,2000 --seconds 20 --peer-a PYTHON
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import publish
from _common import (
    REPO,
    exporter_cmd,
    free_port,
    load,
    proc_stats,
    redis_server,
    scrape,
    stop_pid,
    sum_metric,
)

CEILING = str(REPO / "benchmarks" / "harness" / "ceiling.py")
DEFAULT_LIMIT = "33554432 8388608 60"  # Redis' own default for pubsub clients


def systems(peer_a: str | None, ceiling: bool) -> list[dict]:
    """label, argv (with {broker} {redis_port} {port}), the finished-task expression."""
    out = []
    if peer_a:
        out.append(dict(label="peerA-prometheus-exporter-celery", argv=[
            peer_a, "-c", "import sys; from src.cli import cli; "
            "sys.argv[0] = 'celery-exporter'; cli()", "--broker-url", "{broker}",
            "--host", "127.0.0.1", "--port", "{port}"],
            done=[("celery_task_succeeded_total", {}), ("celery_task_failed_total", {})]))
    if ceiling:
        out.append(dict(label="ceiling-redis-py", argv=[
            sys.executable, CEILING, "--port", "{port}", "--redis-port", "{redis_port}"],
            done=[("ceiling_events_total", {"type": "task-succeeded"}),
                  ("ceiling_events_total", {"type": "task-failed"})]))
    out.append(dict(label="ours", argv=[
        *exporter_cmd(), "--broker-url", "{broker}", "--host", "127.0.0.1", "--port", "{port}",
        "--probe-interval", "0", "--no-inspect"],
        done=[("celery_task_succeeded_total", {}), ("celery_task_failed_total", {})]))
    return out


def _done(text: str, terms: list) -> float:
    return sum(sum_metric(text, name, **labels) for name, labels in terms)


def commands(tasks: int) -> list[bytes]:
    """One RESP PUBLISH per event, built before the clock starts."""
    a = argparse.Namespace(n=tasks, names=20, queues=3, workers=4, spread=False,
                           fail_every=10, seed=7, events="sent,received,started,finished")
    out = []
    for channel, payload in publish.raw_messages(a):
        name = channel.encode()
        out.append(b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                   % (len(name), name, len(payload), payload))
    return out


def paced_publish(port: int, rate: float, cmds: list[bytes]) -> dict:
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.monotonic()
        for i, cmd in enumerate(cmds):
            ahead = t0 + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            sock.sendall(cmd)
            if i % 256 == 255:  # replies (":<subscribers>") must not pile up unread
                _drain(sock)
        dt = time.monotonic() - t0
        _drain(sock)
    return {"events": len(cmds), "events_per_s": round(len(cmds) / dt, 1)}


def _drain(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        while sock.recv(1 << 16):
            pass
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)


def one(system: dict, srv: object, rate: float, seconds: float, log: str) -> dict:
    port = free_port()
    argv = [a.format(broker=srv.url, redis_port=srv.port, port=port)  # type: ignore[attr-defined]
            for a in system["argv"]]
    url = f"http://127.0.0.1:{port}/metrics"
    events = int(rate * seconds) // 4 * 4
    cmds = commands(events // 4)
    res = {"part": "paced", "label": system["label"], "rate": rate, "events": events,
           "load_before": load()}
    import redis
    client = redis.Redis(port=srv.port)  # type: ignore[attr-defined]
    subs_before = client.pubsub_numpat() + len(client.pubsub_channels())
    with open(log, "ab") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=REPO, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{system['label']} exited rc={proc.returncode}")
            with contextlib.suppress(OSError):
                scrape(url, 5)
                if client.pubsub_numpat() + len(client.pubsub_channels()) > subs_before:
                    break
            time.sleep(0.2)
        else:
            raise TimeoutError(f"{system['label']} did not subscribe in time")
        time.sleep(2.0)  # let start-up work settle before the window opens
        before = _done(scrape(url)[0], system["done"])
        subscribers = _subscribers(client)
        cpu0 = proc_stats(proc.pid)["cpu_s"]  # type: ignore[index]
        t0 = time.monotonic()
        published = paced_publish(srv.port, rate, cmds)  # type: ignore[attr-defined]
        time.sleep(1.0)
        st = proc_stats(proc.pid) or {}
        window = time.monotonic() - t0
        cpu = st.get("cpu_s", cpu0) - cpu0
        got = before
        wait_until = time.monotonic() + 30
        while time.monotonic() < wait_until:
            got = _done(scrape(url)[0], system["done"])
            if got - before >= events // 4:
                break
            time.sleep(0.5)
        res.update(
            published_events=published["events"],
            published_events_per_s=published["events_per_s"], window_s=round(window, 2),
            cpu_s=round(cpu, 3), user_s=round(st.get("user_s", 0), 2),
            cpu_us_per_event=round(cpu / published["events"] * 1e6, 1),
            cpu_percent=round(100 * cpu / window, 1),
            lost_tasks=int(events // 4 - (got - before)),
            subscriber_dropped=_subscribers(client) != subscribers,
            rss_mib=round(st.get("VmRSS", 0), 1), alive=proc.poll() is None,
            load_after=load())
    finally:
        if proc.poll() is None:
            stop_pid(proc.pid, 10)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        client.close()
    return res


def _subscribers(client: object) -> set[str]:
    """Ids of the pub/sub connections: Redis dropping a slow one changes the set."""
    return {c["id"] for c in client.client_list(_type="pubsub")}  # type: ignore


def run(rates: list[float], seconds: float, peer_a: str | None = None, ceiling: bool = False,
        runs: int = 1, log: str = os.devnull) -> list[dict]:
    rows = []
    with redis_server("--client-output-buffer-limit", f"pubsub {DEFAULT_LIMIT}") as srv:
        for _ in range(runs):
            for rate in rates:
                for system in systems(peer_a, ceiling):
                    try:
                        row = one(system, srv, rate, seconds, log)
                    except Exception as exc:  # one system failing must not lose the others
                        row = {"part": "paced", "label": system["label"], "rate": rate,
                               "error": f"{type(exc).__name__}: {exc}"[:500]}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="500,2000", help="events/s, comma-separated")
    p.add_argument("--seconds", type=float, default=20.0, help="publishing time per run")
    p.add_argument("--peer-a", help="python of a prometheus-exporter-celery 0.11.2 venv")
    p.add_argument("--ceiling", action="store_true", help="also the bare redis-py loop")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--log", default=os.devnull)
    a = p.parse_args(argv)
    run([float(r) for r in a.rates.split(",")], a.seconds, a.peer_a, a.ceiling, a.runs, a.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())

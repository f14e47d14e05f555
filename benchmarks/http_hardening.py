"""Figures for the HTTP server's hardening, in-process on 127.0.0.1 (no broker needed).

auth: answer times of basic auth with bcrypt cost-10 hashes (as `htpasswd -nBC 10` makes):
      an unknown user against a known user with a wrong password (these two must match, or
      user names can be probed by timing), and a known user's cached right password.
slow: scrape latency of /metrics with no other connection, then with N slowloris
      connections held open (half sending a partial request head).

    .venv/bin/python benchmarks/http_hardening.py [--rounds 20] [--slow 500]

Prints medians and ratios; asserts nothing (speed lives here, not in the tests).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import statistics
import sys
import time
from pathlib import Path

import bcrypt
from prometheus_client import CollectorRegistry, Counter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from celery_events_exporter.http import ExporterServer, serve
from celery_events_exporter.webconfig import WebConfig

COST = 10


def _request(port: int, headers: dict[str, str]) -> tuple[int, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    started = time.perf_counter()
    conn.request("GET", "/metrics", headers=headers)
    r = conn.getresponse()
    r.read()
    elapsed = time.perf_counter() - started
    conn.close()
    return r.status, elapsed * 1000


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _server(web: WebConfig | None) -> ExporterServer:
    registry = CollectorRegistry(auto_describe=False)
    Counter("bench", "a body", registry=registry).inc()
    server = ExporterServer(("127.0.0.1", 0), registry, lambda: (True, "ok"), web)
    serve(server)
    return server


def auth(rounds: int) -> None:
    users = {"prometheus": bcrypt.hashpw(b"right", bcrypt.gensalt(COST))}
    server = _server(WebConfig(users=users))
    port = server.server_address[1]
    cases = {"unknown user": _basic("admin", "right"),
             "known user, wrong password": _basic("prometheus", "wrong"),
             "known user, right password (cached)": _basic("prometheus", "right")}
    times: dict[str, list[float]] = {name: [] for name in cases}
    try:
        _request(port, cases["known user, right password (cached)"])  # fill the cache
        for _ in range(rounds):  # interleaved, so machine noise hits every case alike
            for name, headers in cases.items():
                status, ms = _request(port, headers)
                times[name].append(ms)
                assert status in (200, 401), status
    finally:
        server.shutdown()
        server.server_close()
    medians = {name: statistics.median(v) for name, v in times.items()}
    print(f"basic auth, bcrypt cost {COST}, {rounds} rounds, median ms (min-max):")
    for name, v in times.items():
        print(f"  {name:40s} {medians[name]:8.1f}  ({min(v):.1f}-{max(v):.1f})")
    ratio = medians["unknown user"] / medians["known user, wrong password"]
    print(f"  unknown / known-wrong ratio: {ratio:.2f}")


def slow(count: int, rounds: int) -> None:
    import socket

    server = _server(None)
    port = server.server_address[1]
    held: list[socket.socket] = []
    try:
        quiet = [_request(port, {})[1] for _ in range(rounds)]
        for i in range(count):
            s = socket.create_connection(("127.0.0.1", port), 10)
            if i % 2:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            held.append(s)
        loaded = [_request(port, {})[1] for _ in range(rounds)]
        pending = len(server.gate.pending)
    finally:
        for s in held:
            s.close()
        server.shutdown()
        server.server_close()
    print(f"scrape, {rounds} rounds, median ms: {statistics.median(quiet):.2f} alone, "
          f"{statistics.median(loaded):.2f} with {count} slow connections held "
          f"({pending} pending in the gate); ratio "
          f"{statistics.median(loaded) / statistics.median(quiet):.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--slow", type=int, default=500)
    p.add_argument("--parts", default="auth,slow")
    args = p.parse_args()
    if "auth" in args.parts:
        auth(args.rounds)
    if "slow" in args.parts:
        slow(args.slow, args.rounds)


if __name__ == "__main__":
    main()

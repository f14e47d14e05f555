#!/usr/bin/env python3
"""Where the time goes on the Redis fast path, stage by stage, without noise from I/O.

Records a real event stream (the harness' flood.py through Celery's EventDispatcher into
a private redis-server, read back as raw RESP bytes from a PSUBSCRIBE socket), then
replays the bytes through each stage of our ingest in turn and prints CPU µs per event:

  resp      hiredis Reader.feed + gets (the socket read itself is not replayed), fed
            as RedisConsumer does; resp_whole: each 1 MiB read fed at once
  envelope  orjson.loads of kombu's JSON envelope
  base64    binascii.a2b_base64 of the body
  event     orjson.loads of the event body
  decode    exporter.decode.decode_envelope (envelope + checks + base64 + event)
  state     State.ingest of the decoded events (state_no_exemplars: the same without
            keeping a task id per histogram bucket, to show what exemplars cost)
  pipeline  Pipeline.envelopes (lock + decode + state), what the consumer calls

and, for the scrape side, at ~11k series (50 task names x 3 queues x 4 workers):

  render_ms           our /metrics text renderer (exporter.exposition.generate_text)
  render_ms_client    prometheus_client's generate_latest on the same registry
  render_om_ms        our OpenMetrics renderer (exporter.exposition.generate_openmetrics)
  render_om_ms_client prometheus_client's OpenMetrics generate_latest on the same registry
  lock_ms             how long a scrape holds the pipeline lock (what ingest waits for)

    .venv/bin/python benchmarks/stages.py -n 20000 [--multi 0] [--repeat 5]
"""

from __future__ import annotations

import argparse
import binascii
import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hiredis
import orjson
from _common import HARNESS, read_while_running, redis_server
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_om_client

from celery_events_exporter.collector import CeleryCollector
from celery_events_exporter.decode import decode_envelope
from celery_events_exporter.exposition import generate_openmetrics, generate_text
from celery_events_exporter.ingest.redis import FEED_SIZE, READ_SIZE
from celery_events_exporter.pipeline import Pipeline
from celery_events_exporter.state import State


def record(n: int, multi: int, max_seconds: float = 120.0) -> bytes:
    """Raw RESP bytes of every pub/sub message flood.py publishes for n tasks."""
    with redis_server("--client-output-buffer-limit", "pubsub 0 0 0") as srv:
        sock = socket.create_connection(("127.0.0.1", srv.port), 5)
        sock.sendall(b"*2\r\n$10\r\nPSUBSCRIBE\r\n$13\r\n/0.celeryev/*\r\n")
        sock.recv(4096)
        flood = subprocess.Popen(
            [sys.executable, str(HARNESS / "flood.py"), "--broker", srv.url, "-n", str(n),
             "--procs", "1", "--pipeline", "200", "--multi", str(multi)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sock.settimeout(0.5)
        try:
            return read_while_running(sock, flood, max_seconds, 1 << 20)
        finally:
            sock.close()


def payloads(raw: bytes) -> list[bytes]:
    reader = hiredis.Reader()
    reader.feed(raw)
    out = []
    reply = reader.gets()
    while reply is not False:
        if len(reply) == 4:
            out.append(reply[3])
        reply = reader.gets()
    return out


def scrape_costs(repeat: int = 20) -> dict:
    state = State()
    now = time.time()
    events = []
    for i in range(12_000):
        u, w = f"u{i}", f"celery@worker-{(i // 150) % 4}"
        name, queue = f"app.tasks.mod{i % 50 // 10}.job_{i % 50}", f"queue{(i // 50) % 3}"
        events += [
            {"type": "task-sent", "uuid": u, "name": name, "queue": queue,
             "hostname": "gen1@web", "timestamp": now - 1},
            {"type": "task-received", "uuid": u, "name": name, "hostname": w,
             "timestamp": now - 0.99},
            {"type": "task-started", "uuid": u, "hostname": w, "timestamp": now - 0.98},
            {"type": "task-succeeded", "uuid": u, "hostname": w, "runtime": 0.01 * (i % 300),
             "timestamp": now - 0.5}]
    state.ingest(events, now)
    pipeline = Pipeline(state)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CeleryCollector(pipeline))
    real = pipeline.lock
    holds: list[float] = []

    class TimedLock:
        def __enter__(self) -> None:
            real.acquire()
            self.t = time.perf_counter()

        def __exit__(self, *exc: object) -> None:
            holds.append(time.perf_counter() - self.t)
            real.release()

    pipeline.lock = TimedLock()  # type: ignore[assignment]

    def best(fn) -> float:
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn(registry)
            times.append(time.perf_counter() - t)
        return round(min(times) * 1000, 2)

    generate_text(registry)  # the first scrape shows new series at 0 (exporter.state.series)
    text = generate_text(registry)
    assert text == generate_latest(registry)
    return {"series": sum(1 for line in text.splitlines() if not line.startswith(b"#")),
            "render_ms": best(generate_text), "render_ms_client": best(generate_latest),
            "render_om_ms": best(generate_openmetrics),
            "render_om_ms_client": best(generate_om_client),
            "lock_ms": round(sorted(holds)[len(holds) // 2] * 1000, 3)}


def timed(fn, repeat: int) -> float:
    """Best CPU seconds of `repeat` runs (process time: no credit for being descheduled)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=20000, help="tasks to record (4 events each)")
    p.add_argument("--multi", type=int, default=0, help="flood.py --multi (task.multi size)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print one JSON line")
    a = p.parse_args(argv)
    raw = record(a.n, a.multi)
    msgs = payloads(raw)
    envs = [orjson.loads(m) for m in msgs]
    bodies_b64 = [e["body"] for e in envs]
    bodies = [binascii.a2b_base64(b) for b in bodies_b64]
    events = [orjson.loads(b) for b in bodies]
    n_events = sum(len(e) if type(e) is list else 1 for e in events)
    decoded = [decode_envelope(m) for m in msgs]
    now = time.time()
    chunk = 256  # about what one 1 MiB socket read holds

    def resp() -> None:  # as RedisConsumer does: 1 MiB reads fed FEED_SIZE at a time
        reader = hiredis.Reader()
        feed, gets = reader.feed, reader.gets
        for i in range(0, len(raw), READ_SIZE):
            data = raw[i:i + READ_SIZE]
            size = len(data)
            for offset in range(0, size, FEED_SIZE):
                feed(data, offset, min(FEED_SIZE, size - offset))
                while gets() is not False:
                    pass

    def resp_whole() -> None:  # each 1 MiB read fed at once (before the fix)
        reader = hiredis.Reader()
        feed, gets = reader.feed, reader.gets
        for i in range(0, len(raw), READ_SIZE):
            feed(raw[i:i + READ_SIZE])
            while gets() is not False:
                pass

    def envelope() -> None:
        loads = orjson.loads
        for m in msgs:
            loads(m)

    def base64() -> None:
        a2b = binascii.a2b_base64
        for b in bodies_b64:
            a2b(b)

    def event() -> None:
        loads = orjson.loads
        for b in bodies:
            loads(b)

    def decode() -> None:
        for m in msgs:
            decode_envelope(m)

    def state() -> None:
        s = State()
        ingest = s.ingest
        for evs in decoded:
            ingest(evs, now)

    def state_no_exemplars() -> None:  # what keeping exemplars costs: state minus this
        s = State()
        for series in s.histograms.values():
            series.exemplars = None
        ingest = s.ingest
        for evs in decoded:
            ingest(evs, now)

    def pipeline() -> None:
        pl = Pipeline(State())
        env = pl.envelopes
        for i in range(0, len(msgs), chunk):
            env(msgs[i:i + chunk], now)

    res = {"tasks": a.n, "multi": a.multi, "messages": len(msgs), "events": n_events,
           "bytes_per_message": round(len(raw) / max(len(msgs), 1))}
    for name, fn in (("resp", resp), ("resp_whole", resp_whole), ("envelope", envelope),
                     ("base64", base64), ("event", event), ("decode", decode),
                     ("state", state), ("state_no_exemplars", state_no_exemplars),
                     ("pipeline", pipeline)):
        res[f"{name}_us"] = round(timed(fn, a.repeat) / n_events * 1e6, 2)
    res["total_us"] = round(res["resp_us"] + res["pipeline_us"], 2)
    res.update(scrape_costs())
    if a.json:
        print(json.dumps(res))
        return 0
    print(f"{len(msgs):,} messages, {n_events:,} events, {res['bytes_per_message']} B/message "
          f"(multi={a.multi}); best of {a.repeat}, CPU µs per event:")
    for key in ("resp", "resp_whole", "envelope", "base64", "event", "decode", "state",
                "state_no_exemplars", "pipeline", "total"):
        print(f"  {key:<18} {res[key + '_us']:6.2f}")
    print(f"scrape at {res['series']:,} series: render {res['render_ms']} ms "
          f"(prometheus_client: {res['render_ms_client']} ms), OpenMetrics "
          f"{res['render_om_ms']} ms (prometheus_client: {res['render_om_ms_client']} ms), "
          f"lock held {res['lock_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

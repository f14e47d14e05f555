#!/usr/bin/env python3
"""The AMQP path: CPU per ingested event against a private RabbitMQ node.

Boots a private RabbitMQ (tests/support/servers.py: own node name, ports and data dir,
stopped by pid), starts our exporter on it (lean AMQP consumer, exporter/ingest/amqp.py:
its own exclusive queue bound to the celeryev topic exchange), publishes -n tasks (4
events each: sent, received, started, succeeded or 1 in 10 failed) through Celery's
EventDispatcher flat out from
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
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REPO, load, read_while_running, redis_server, scrape, started, sum_metric

from tests.support.servers import rabbit_server

PUBLISH = str(REPO / "benchmarks" / "publish.py")


def done(url: str) -> float:
    return counts(url)[0]


def counts(url: str) -> tuple[float, float]:
    """Tasks finished, and events of any type ingested."""
    text, _ = scrape(url)
    return (sum_metric(text, "celery_task_succeeded_total")
            + sum_metric(text, "celery_task_failed_total"),
            sum_metric(text, "celery_exporter_events_total"))


def publish_raw(broker: str, n: int, seed: int, rate: float, max_seconds: float) -> dict:
    """AMQP twin of publish.py's --via raw: the messages Celery's EventDispatcher sends
    (same event dicts as publish.py's plan, JSON body, content type/encoding, hostname
    header, transient delivery) built here and published with py-amqp, fast enough for a
    flood on a loaded machine where the dispatcher tops out at ~1-2k events/s."""
    from types import SimpleNamespace

    import orjson
    from amqp import Connection as AmqpConnection
    from amqp.basic_message import Message
    from publish import plan

    from celery_events_exporter.config import Config

    cfg = Config(broker_url=broker)
    parts = broker.split("://", 1)[1]
    creds, _, rest = parts.rpartition("@")
    user, _, password = creds.partition(":")
    conn = AmqpConnection(host=rest.split("/", 1)[0], userid=user or "guest",
                          password=password or "guest", virtual_host="/",
                          # py-amqp's default TCP_USER_TIMEOUT (1 s) drops the connection
                          # when RabbitMQ's flow control holds our writes that long.
                          socket_settings={socket.TCP_USER_TIMEOUT: 0})
    conn.connect()
    ch = conn.channel()
    ch.exchange_declare(cfg.events_exchange, "topic", durable=True, auto_delete=False)
    a = SimpleNamespace(n=n, seed=seed, names=20, queues=3, workers=4, spread=False,
                        fail_every=10, events="sent,received,started,finished")
    pids: dict[str, int] = {}
    clocks: dict[str, int] = {}
    dumps = orjson.dumps
    pack = struct.pack
    chan = ch.channel_id
    exchange = cfg.events_exchange.encode()
    # Frames are built here and written 200 messages per write: py-amqp's basic_publish
    # costs ~40 µs of Python per message, which a loaded machine turns into the limit.
    # The bytes are what basic_publish writes (its properties encoder, per host).
    props: dict[str, bytes] = {}
    methods: dict[str, bytes] = {}
    batch: list[bytes] = []
    write = conn.transport.write
    sent = 0
    t0 = time.time()
    deadline = t0 + max_seconds
    try:
        for host, kind, fields in plan(a):
            pid = pids.setdefault(host, 1000 + len(pids))
            clocks[host] = clock = clocks.get(host, 0) + 1
            ts = fields.pop("timestamp", None) or time.time()
            body = dumps({"hostname": host, "utcoffset": 0, "pid": pid, "clock": clock,
                          **fields, "timestamp": ts, "type": kind})
            method = methods.get(kind)
            if method is None:
                key = kind.replace("-", ".").encode()
                payload = (pack(">HHH", 60, 40, 0) + bytes([len(exchange)]) + exchange
                           + bytes([len(key)]) + key + b"\x00")
                method = methods[kind] = (pack(">BHI", 1, chan, len(payload)) + payload
                                          + b"\xce")
            prop = props.get(host)
            if prop is None:
                prop = props[host] = Message(
                    b"", content_type="application/json", content_encoding="utf-8",
                    application_headers={"hostname": host}, delivery_mode=1,
                    priority=0)._serialize_properties()
            batch.append(method)
            batch.append(pack(">BHIHHQ", 2, chan, 12 + len(prop), 60, 0, len(body)))
            batch.append(prop)
            batch.append(pack(">BBHI", 0xCE, 3, chan, len(body)))
            batch.append(body)
            batch.append(b"\xce")
            sent += 1
            if sent % 200 == 0:
                write(b"".join(batch))
                batch.clear()
                now = time.time()
                if now > deadline:
                    break
                if rate:
                    ahead = t0 + sent / rate - now
                    if ahead > 0:
                        time.sleep(min(ahead, 1.0))
        if batch:
            write(b"".join(batch))
        # Round trip on the channel: the broker has routed everything written before it.
        ch.basic_qos(0, 0, False)
    finally:
        try:
            conn.close()
        except OSError:  # a broker still busy with the flood: the socket goes anyway
            conn.collect()
    dt = time.time() - t0
    return {"events": sent, "seconds": round(dt, 3), "events_per_s": round(sent / dt, 1)}


def measure(broker: str, n: int, extra: tuple[str, ...], log: str, label: str,
            procs: int = 2, burst: bool = False, rate: float = 0.0, raw: bool = False) -> dict:
    res: dict = {"part": "amqp", "label": label + ("-burst" if burst else ""), "n": n,
                 "burst": burst, "rate": rate, "raw": raw, "load_before": load()}
    pace = ("--rate", str(rate / procs)) if rate else ()
    if not raw:
        cmd = [sys.executable, PUBLISH, "--broker", broker]
    elif broker.startswith("redis"):
        cmd = [sys.executable, PUBLISH, "--via", "raw", "--broker", broker]
    else:
        cmd = [sys.executable, __file__, "--publish-raw", broker]
    with started(broker, *extra, log=log) as exp:
        exp.wait_ready()
        time.sleep(1.0)
        base, seen0 = counts(exp.url)
        st0 = exp.stats() or {}
        if burst:  # hold the exporter while the queue fills: pure drain cost, no wake-ups
            os.kill(exp.pid, signal.SIGSTOP)
        t0 = time.time()
        pubs = [subprocess.Popen([*cmd,
                                  "-n", str(n // procs + (i < n % procs)), "--seed", str(i + 1),
                                  "--max-seconds", "600", *pace],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for i in range(procs)]
        rate = 0.0
        published = 0
        for pub in pubs:
            out, err = pub.communicate(timeout=900)
            if pub.returncode:
                raise RuntimeError(f"publisher failed: {err.decode()[-1500:]}")
            row = json.loads(out.decode().strip().splitlines()[-1])
            rate += row["events_per_s"]
            published += row["events"]
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
            # One scrape a second, as a 1 s Prometheus would do: polling faster would put
            # the scrapes' own CPU in the per-event figure (more so at low rates).
            time.sleep(1.0)
        t1 = time.time()
        st1 = exp.stats() or {}
        seen = counts(exp.url)[1] - seen0
    finished = value - base
    events = 4 * finished
    cpu = st1.get("cpu_s", 0) - st0.get("cpu_s", 0)
    res.update(done=int(finished), lost=int(n - finished), events_published=published,
               events_lost=int(published - seen),
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
                 rate: float = 0.0, burst: bool = False, raw: bool = False,
                 kombu: bool = True) -> list[dict]:
    """Redis fast path, lean AMQP consumer, kombu consumer on AMQP: one run, one machine."""
    rows = []
    with redis_server("--client-output-buffer-limit", "pubsub 0 0 0") as srv:
        rows.append(measure(srv.url, n, (), log, "ours-redis", procs, burst, rate, raw))
    with rabbit_server() as server:
        rows.append(measure(server.url, n, (), log, "ours-amqp", procs, burst, rate, raw))
        if kombu:
            rows.append(measure(server.url, n, ("--ingest", "kombu"), log, "ours-amqp-kombu",
                                procs, burst, rate, raw))
    redis_us = rows[0]["cpu_us_per_event"] or 1e-9
    for row in rows:
        row["x_redis"] = round(row["cpu_us_per_event"] / redis_us, 2)
    return rows


def record(url: str, n: int, max_seconds: float = 300.0) -> tuple[bytes, int]:
    """Raw AMQP bytes of n tasks' deliveries, read from the lean consumer's own socket
    setup (queue declared as it declares it), and the channel they arrive on."""
    from kombu import Connection

    from celery_events_exporter.config import Config
    from celery_events_exporter.ingest.kombu import KombuConsumer
    from celery_events_exporter.pipeline import Pipeline
    from celery_events_exporter.state import State

    conn = Connection(url, connect_timeout=5, heartbeat=0)
    try:
        conn.ensure_connection(max_retries=1)
        channel = conn.default_channel
        queue = KombuConsumer(Config(broker_url=url), Pipeline(State()))._queue(conn)(channel)
        queue.declare()
        channel.basic_consume(queue=queue.name, no_ack=True, callback=lambda m: None)
        sock = conn.connection.transport.sock
        sock.settimeout(0.5)
        pub = subprocess.Popen([sys.executable, PUBLISH, "--broker", url, "-n", str(n),
                                "--max-seconds", str(max_seconds)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return read_while_running(sock, pub, max_seconds, 1 << 18), channel.channel_id
    finally:
        conn.collect()


def stages(n: int = 5000, repeat: int = 3, profile: bool = False) -> dict:
    """Offline replay of recorded deliveries: frame reading, then frames + pipeline."""
    import cProfile
    import pstats

    from celery_events_exporter.ingest.amqp import READ_SIZE
    from celery_events_exporter.ingest.amqpframes import FrameReader
    from celery_events_exporter.pipeline import Pipeline
    from celery_events_exporter.state import State

    url = os.environ.get("CEE_TEST_AMQP_URL")
    if url:
        data, chan = record(url, n)
    else:
        with rabbit_server() as server:
            data, chan = record(server.url, n)
    reads = [data[i:i + READ_SIZE] for i in range(0, len(data), READ_SIZE)]
    res: dict = {"part": "amqp-stages", "n": n, "bytes": len(data)}

    def frames() -> int:
        reader, out = FrameReader(chan), []
        for chunk in reads:
            reader.feed(chunk, out)
        return len(out)

    def pipeline() -> int:
        reader, pipe, count = FrameReader(chan), Pipeline(State()), 0
        for chunk in reads:
            out: list = []
            reader.feed(chunk, out)
            pipe.bodies(out, time.time())
            count += len(out)
        return count

    for name, fn in (("frames", frames), ("frames_pipeline", pipeline)):
        best = float("inf")
        for _ in range(repeat):
            t = time.process_time()
            events = fn()
            best = min(best, time.process_time() - t)
        res[f"{name}_us_per_event"] = round(best / max(events, 1) * 1e6, 2)
        res["events"] = events
    if profile:
        prof = cProfile.Profile()
        prof.runcall(pipeline)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(15)
    return res


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
    p.add_argument("--raw", action="store_true",
                   help="with --side-by-side: publish prebuilt messages (publish.py --via raw "
                        "on Redis, py-amqp here on RabbitMQ) instead of Celery's dispatcher")
    p.add_argument("--no-kombu", action="store_true",
                   help="with --side-by-side: leave out the kombu consumer's run")
    p.add_argument("--publish-raw", metavar="BROKER", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--max-seconds", type=float, default=600.0, help=argparse.SUPPRESS)
    p.add_argument("--stages", action="store_true",
                   help="offline: record -n tasks' deliveries, replay frames and pipeline")
    p.add_argument("--profile", action="store_true", help="with --stages: cProfile to stderr")
    p.add_argument("--log", default=os.devnull)
    a = p.parse_args(argv)
    if a.publish_raw:
        host = a.publish_raw.split("://", 1)[-1].rsplit("@", 1)[-1]
        if not host.startswith(("127.0.0.1", "localhost")):
            sys.exit("refusing a non-loopback broker")
        print(json.dumps(publish_raw(a.publish_raw, a.n, a.seed, a.rate, a.max_seconds)))
        return 0
    if a.stages:
        print(json.dumps(stages(a.n, profile=a.profile)))
        return 0
    if a.side_by_side:
        for row in side_by_side(a.n, a.log, a.procs, a.rate, a.burst, a.raw,
                                not a.no_kombu):
            print(json.dumps(row), flush=True)
        return 0
    print(json.dumps(run(a.n, a.log, a.via_redis, a.procs, a.burst)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

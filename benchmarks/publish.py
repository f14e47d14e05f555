#!/usr/bin/env python3
"""A configurable Celery event publisher for the runs the harness' flood.py does not cover.

harness/flood.py stays the publisher of the side-by-side table. This one adds
what the extra runs need: many task names (to reach 10k series), tasks that never finish
(no terminal event), an AMQP broker, and a pace.

--via celery   every event through Celery's own EventDispatcher (app.events.Dispatcher),
               pipelined with kombu's Producer.batch() where the transport has it (Redis);
               works on any broker URL.
--via raw      Redis only: the exact kombu envelope (JSON, base64 body, delivery_info),
               built here and PUBLISHed in pipelines, for floods bigger than the dispatcher
               can publish in reasonable time (e.g. 1M unfinished tasks).

Prints one JSON line with totals. Bounded by -n and --max-seconds.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import sys
import time
import uuid as uuidlib

EXC = "ValueError(\"invalid literal for int() with base 10: 'abc'\")"


def task_names(count: int) -> list[str]:
    return [f"app.tasks.mod{i // 10}.job_{i}" for i in range(count)]


def plan(a: argparse.Namespace):
    """(hostname, type, fields) for every event, in the order a busy cluster shows them."""
    rnd = random.Random(a.seed)
    names = task_names(a.names)
    queues = [f"queue{q}" for q in range(a.queues)]
    workers = [f"celery@worker-{w + 1}" for w in range(a.workers)]
    client = "gen4242@web-1"
    kinds = a.events.split(",")
    for w in workers:
        yield w, "worker-online", dict(freq=2.0, sw_ident="py-celery", sw_ver="5.7.0",
                                       sw_sys="Linux", active=0, processed=0,
                                       loadavg=[0.5, 0.5, 0.5])
    chunk = 16
    for c0 in range(0, a.n, chunk):
        batch = []
        for i in range(c0, min(c0 + chunk, a.n)):
            u = str(uuidlib.UUID(int=rnd.getrandbits(128), version=4))
            name = names[i % len(names)]
            if a.spread:  # every (name, queue, worker) in turn: the most series
                queue = queues[(i // len(names)) % len(queues)]
                worker = workers[(i // (len(names) * len(queues))) % len(workers)]
            else:
                queue = queues[i % len(queues)]
                worker = workers[rnd.randrange(len(workers))]
            ts = time.time()
            batch.append((i, u, name, queue, worker, ts))
        if "sent" in kinds:
            for i, u, name, queue, _w, ts in batch:
                yield client, "task-sent", dict(
                    uuid=u, root_id=u, parent_id=None, name=name, args=f"({i},)",
                    kwargs="{}", retries=0, eta=None, expires=None, queue=queue,
                    exchange="", routing_key=queue, timestamp=ts)
        if "received" in kinds:
            for i, u, name, _q, w, ts in batch:
                yield w, "task-received", dict(
                    uuid=u, name=name, args=f"({i},)", kwargs="{}", root_id=u,
                    parent_id=None, retries=0, eta=None, expires=None, timestamp=ts + 0.002)
        if "started" in kinds:
            for _i, u, _n, _q, w, ts in batch:
                yield w, "task-started", dict(uuid=u, timestamp=ts + 0.003)
        if "finished" in kinds:
            for i, u, _n, _q, w, ts in batch:
                if a.fail_every and i % a.fail_every == a.fail_every - 1:
                    yield w, "task-failed", dict(uuid=u, exception=EXC,
                                                 traceback="Traceback ...", timestamp=ts + 0.01)
                else:
                    yield w, "task-succeeded", dict(uuid=u, result="None", runtime=0.007,
                                                    timestamp=ts + 0.01)


def via_celery(a: argparse.Namespace) -> int:
    from celery import Celery
    from kombu.clocks import LamportClock

    app = Celery(broker=a.broker)
    conn = app.connection_for_write()
    conn.ensure_connection(max_retries=3)
    ch = conn.channel()
    dispatchers = {}
    producer = None

    def dispatcher(host: str):
        nonlocal producer
        d = dispatchers.get(host)
        if d is None:
            d = dispatchers[host] = app.events.Dispatcher(channel=ch, hostname=host)
            d.clock = LamportClock()
            if producer is None:
                producer = d.producer
            d.producer = producer
        return d

    dispatcher("gen4242@web-1")
    sent = 0
    batching = conn.transport.driver_type == "redis" and a.pipeline > 0
    ctx = producer.batch(a.pipeline) if batching else None
    if ctx is not None:
        ctx.__enter__()
    deadline = time.time() + a.max_seconds
    t0 = time.time()
    try:
        for host, kind, fields in plan(a):
            dispatcher(host).send(kind, **fields)
            sent += 1
            if sent % 1000 == 0:
                if time.time() > deadline:
                    break
                if a.rate:
                    ahead = t0 + sent / a.rate - time.time()
                    if ahead > 0:
                        if ctx is not None:
                            ctx.__exit__(None, None, None)
                        time.sleep(min(ahead, 1.0))
                        if ctx is not None:
                            ctx = producer.batch(a.pipeline)
                            ctx.__enter__()
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)
        conn.release()
    return sent


def raw_messages(a: argparse.Namespace, db: int = 0):
    """(channel, payload) of every event: the exact kombu envelope (JSON, base64 body)."""
    import orjson  # compact JSON; kombu's reader takes any JSON, and this keeps up

    pids: dict[str, int] = {}
    clocks: dict[str, int] = {}
    dumps = orjson.dumps
    b64 = base64.b64encode
    tag = uuidlib.uuid4().hex[:24]
    for count, (host, kind, fields) in enumerate(plan(a)):
        pid = pids.setdefault(host, 1000 + len(pids))
        clocks[host] = clock = clocks.get(host, 0) + 1
        ts = fields.pop("timestamp", None) or time.time()
        body = {"hostname": host, "utcoffset": 0.0, "pid": pid, "clock": clock, **fields,
                "timestamp": ts, "type": kind}
        key = kind.replace("-", ".")
        envelope = {
            "body": b64(dumps(body)).decode(), "content-encoding": "utf-8",
            "content-type": "application/json", "headers": {"hostname": host},
            "properties": {"delivery_mode": 1,
                           "delivery_info": {"exchange": "celeryev", "routing_key": key},
                           "priority": 0, "body_encoding": "base64",
                           "delivery_tag": f"{tag[:8]}-{tag[8:12]}-{tag[12:16]}-"
                                           f"{tag[16:20]}-{tag[20:]}{count:012x}"}}
        yield f"/{db}.celeryev/{key}", dumps(envelope)


def via_raw(a: argparse.Namespace) -> int:
    import redis

    r = redis.Redis.from_url(a.broker)
    db = r.connection_pool.connection_kwargs.get("db", 0)
    pipe = r.pipeline(transaction=False)
    queued = sent = 0
    deadline = time.time() + a.max_seconds
    t0 = time.time()
    for channel, payload in raw_messages(a, db):
        pipe.publish(channel, payload)
        queued += 1
        if queued >= a.pipeline:
            pipe.execute()
            sent += queued
            queued = 0
            if time.time() > deadline:
                break
            if a.rate:
                ahead = t0 + sent / a.rate - time.time()
                if ahead > 0:
                    time.sleep(min(ahead, 1.0))
    if queued:
        pipe.execute()
        sent += queued
    r.close()
    return sent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", required=True)
    p.add_argument("-n", type=int, default=10000, help="tasks")
    p.add_argument("--via", choices=("celery", "raw"), default="celery")
    p.add_argument("--events", default="sent,received,started,finished",
                   help="which task events to send (comma-separated subset of "
                        "sent,received,started,finished)")
    p.add_argument("--names", type=int, default=20, help="distinct task names")
    p.add_argument("--queues", type=int, default=3)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--spread", action="store_true",
                   help="cycle tasks through every (name, queue, worker): the most series")
    p.add_argument("--fail-every", type=int, default=10)
    p.add_argument("--pipeline", type=int, default=200)
    p.add_argument("--rate", type=float, default=0.0, help="events/s, 0 = flat out")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--max-seconds", type=float, default=600.0)
    a = p.parse_args(argv)
    host = a.broker.split("://", 1)[-1].rsplit("@", 1)[-1]
    if not host.startswith(("127.0.0.1", "localhost")):
        sys.exit("refusing a non-loopback broker")
    t = time.time()
    if a.via == "raw":
        if not a.broker.startswith("redis://"):
            sys.exit("--via raw is for redis:// only")
        sent = via_raw(a)
    else:
        sent = via_celery(a)
    dt = time.time() - t
    print(json.dumps({"events": sent, "seconds": round(dt, 3),
                      "events_per_s": round(sent / max(dt, 1e-9), 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

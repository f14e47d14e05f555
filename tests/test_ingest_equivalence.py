"""Both ingest paths, one event stream, the same numbers.

A synthetic but complete stream (every task event type, retries, ETA tasks, revokes with
reasons, tasks seen mid-flight, worker online/heartbeat/offline, worker-style `task.multi`
batches, a pickle message to reject) is published with Celery's own EventDispatcher into
a private Redis. Two consumers read it at the same time: the Redis fast path (raw socket,
hiredis, our JSON decoding) and the generic kombu path (kombu's Redis pub/sub client, the
path AMQP takes). Each feeds its own State; the two must agree exactly on every counter,
every histogram's observation count (and bucket counts where both ends are on the worker's
clock), the event and drop counts, the in-flight table and the worker gauges.

Queue-wait buckets and sums are left out on purpose: they use the exporter's receive time
to correct clock skew, and the two consumers receive each message a few µs apart.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Iterator

import pytest
from celery import Celery
from kombu import Exchange, Producer
from kombu.clocks import LamportClock
from prometheus_client import CollectorRegistry, generate_latest

from celery_events_exporter import metrics as m
from celery_events_exporter.collector import CeleryCollector, generate_text
from celery_events_exporter.config import Config
from celery_events_exporter.ingest.kombu import KombuConsumer
from celery_events_exporter.ingest.redis import RedisConsumer
from celery_events_exporter.pipeline import Pipeline
from celery_events_exporter.state import State

pytestmark = pytest.mark.redis

EXCHANGE = "cee_equivalence_ev"
WARMUP = "cee-equivalence-warmup"
DB = 13
WORKERS = ("celery@equiv-1", "celery@equiv-2", "celery@equiv-3")
CLIENT = "gen4242@web-equiv"
NAMES = ("app.tasks.add", "app.tasks.mail", 'app.tasks.evil"name\\x', "app.reports.build")
QUEUES = ("default", "mail", "reports")
DEADLINE = 60.0
SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? \S+$')


def stream(seed: int = 11, tasks: int = 240) -> list[tuple[str, str, dict]]:
    """(hostname, event type, fields) in the order a busy cluster would emit them."""
    rnd = random.Random(seed)
    t0 = time.time() - 30.0
    out: list[tuple[str, str, dict]] = []
    for w in WORKERS:
        out.append((w, "worker-online", dict(freq=2.0, sw_ident="py-celery", sw_ver="5.7.0",
                                             sw_sys="Linux", timestamp=t0)))
    for i in range(tasks):
        u = f"00000000-0000-4000-8000-{i:012d}"
        name, queue = NAMES[i % len(NAMES)], QUEUES[i % len(QUEUES)]
        worker = WORKERS[rnd.randrange(len(WORKERS))]
        ts = t0 + i * 0.01
        if i % 40 == 39:
            for n, w in enumerate(WORKERS):
                out.append((w, "worker-heartbeat", dict(
                    freq=2.0, sw_ident="py-celery", sw_ver="5.7.0", sw_sys="Linux",
                    active=n, processed=i, loadavg=[0.1, 0.2, 0.3], timestamp=ts)))
        eta = None
        if i % 17 == 5:
            eta = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts + 2)) + ".000000+00:00"
        mid_flight = i % 23 == 7  # the exporter "started" after this task was sent
        if not mid_flight:
            out.append((CLIENT, "task-sent", dict(
                uuid=u, root_id=u, parent_id=None, name=name, args="(1,)", kwargs="{}",
                retries=0, eta=eta, expires=None, queue=queue, exchange="",
                routing_key=queue, timestamp=ts)))
            out.append((worker, "task-received", dict(
                uuid=u, name=name, args="(1,)", kwargs="{}", root_id=u, parent_id=None,
                retries=0, eta=eta, expires=None, timestamp=ts + rnd.uniform(0.001, 0.02))))
        start = ts + (3.0 if eta else rnd.uniform(0.02, 0.2))
        kind = i % 10
        if kind == 9:  # revoked before it ran, with a reason
            reason = rnd.choice([{}, {"terminated": True, "signum": 15}, {"expired": True}])
            out.append((worker, "task-revoked", dict(uuid=u, timestamp=start, **reason)))
            continue
        out.append((worker, "task-started", dict(uuid=u, timestamp=start)))
        runtime = rnd.lognormvariate(-2.0, 1.5)
        if kind == 8:  # a retry: failed attempt, new task-sent with retries=1, then success
            out.append((worker, "task-retried", dict(
                uuid=u, exception="RuntimeError('again')", traceback="tb", timestamp=start + 0.1)))
            out.append((f"gen{4300 + i}@{worker.split('@')[1]}", "task-sent", dict(
                uuid=u, root_id=u, parent_id=None, name=name, args="(1,)", kwargs="{}",
                retries=1, eta=None, expires=None, queue=queue, exchange="",
                routing_key=queue, timestamp=start + 0.11)))
            out.append((worker, "task-received", dict(
                uuid=u, name=name, retries=1, eta=None, timestamp=start + 0.12)))
            out.append((worker, "task-started", dict(uuid=u, timestamp=start + 0.13)))
            out.append((worker, "task-succeeded", dict(uuid=u, result="1", runtime=runtime,
                                                       timestamp=start + 0.13 + runtime)))
        elif kind == 7:
            exc = rnd.choice(["ValueError('x')", "KeyError('k')",
                              "billiard.exceptions.Terminated(9)"])
            out.append((worker, "task-failed", dict(uuid=u, exception=exc, traceback="tb",
                                                    timestamp=start + runtime)))
            if i % 20 == 7:
                out.append((worker, "task-rejected", dict(uuid=u, requeue=False,
                                                          timestamp=start + runtime)))
        elif kind == 6 and i % 3 == 0:
            pass  # terminal event lost: stays in flight
        else:
            out.append((worker, "task-succeeded", dict(uuid=u, result="None", runtime=runtime,
                                                       timestamp=start + runtime)))
    out.append((WORKERS[-1], "worker-offline", dict(freq=2.0, sw_ident="py-celery",
                                                    sw_ver="5.7.0", sw_sys="Linux",
                                                    timestamp=t0 + tasks * 0.01 + 5)))
    return out


class Publisher:
    """One EventDispatcher per node, sharing a producer; worker 1 batches like prefork."""

    def __init__(self, broker: str) -> None:
        self.app = Celery("cee_equivalence", broker=broker)
        self.app.conf.event_exchange = EXCHANGE
        self.conn = self.app.connection_for_write()
        self.conn.ensure_connection(max_retries=3)
        self.channel = self.conn.channel()
        self.dispatchers: dict[str, object] = {}
        self.messages = 0

    def dispatcher(self, host: str):
        d = self.dispatchers.get(host)
        if d is None:
            batched = host == WORKERS[0]
            d = self.app.events.Dispatcher(channel=self.channel, hostname=host,
                                           buffer_group=["task"] if batched else None,
                                           buffer_limit=7)
            d.clock = LamportClock()
            self.dispatchers[host] = d
        return d

    def send(self, host: str, kind: str, fields: dict) -> None:
        self.dispatcher(host).send(kind, **fields)

    def flush(self) -> None:
        for d in self.dispatchers.values():
            d.flush()

    def pickle_message(self) -> None:
        """A message our decoders must reject (and count), never unpickle."""
        producer = Producer(self.channel, exchange=Exchange(EXCHANGE, type="topic"))
        producer.publish({"type": "task-succeeded", "uuid": "x", "hostname": "evil@h",
                          "timestamp": time.time()}, routing_key="task.succeeded",
                         serializer="pickle", retry=False)

    def close(self) -> None:
        self.conn.release()


def snapshot(pipeline: Pipeline) -> dict:
    state = pipeline.state
    with pipeline.lock:
        out: dict = {
            "counters": {k: {key: cell[0] for key, cell in s.data.items()}
                         for k, s in state.counters.items()},
            "histogram_counts": {k: {key: sum(cell[:-1]) for key, cell in s.data.items()}
                                 for k, s in state.histograms.items()},
            # Both ends on the worker's clock: no receive time in them, so exact.
            "worker_clock_histograms": {
                k: {key: list(cell) for key, cell in state.histograms[k].data.items()}
                for k in (m.PREFETCH_WAIT.key, m.RUNTIME.key)},
            "event_types": {k: v for k, v in state.event_types.items() if k != WARMUP},
            "invalid": dict(state.invalid),
            "evicted": dict(state.evicted),
            "tracked": sorted(state.tasks),
            "buffers": {u: (t.name, t.queue, t.buf, t.retries, t.eta)
                        for u, t in state.tasks.items()},
            "finished": dict(state.finished),
            "workers": {h: (w.up, w.active, w.prefetched, w.scheduled, w.sw_ver, w.freq,
                            w.last_processed, w.events_missing)
                        for h, w in state.workers.items()},
            "queues": sorted(state.queues_seen),
        }
    return out


def seen(pipeline: Pipeline, kind: str) -> int:
    with pipeline.lock:
        return pipeline.state.event_types.get(kind, 0)


def total(pipeline: Pipeline) -> int:
    with pipeline.lock:
        return sum(v for k, v in pipeline.state.event_types.items() if k != WARMUP)


@pytest.fixture
def consumers(redis_url: str) -> Iterator[tuple[str, Pipeline, Pipeline]]:
    broker = redis_url.rsplit("/", 1)[0] + f"/{DB}"
    fast = Pipeline(State())
    generic = Pipeline(State())
    started = [
        RedisConsumer(Config(broker_url=broker, events_exchange=EXCHANGE, ingest="redis"), fast),
        KombuConsumer(Config(broker_url=broker, events_exchange=EXCHANGE, ingest="kombu"),
                      generic),
    ]
    for consumer in started:
        consumer.start()
    try:
        yield broker, fast, generic
    finally:
        for consumer in started:
            consumer.stop()
        assert not any(c.thread and c.thread.is_alive() for c in started), "consumer hung"


def wait_until(predicate, what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_redis_fast_path_and_kombu_path_build_the_same_state(
        consumers: tuple[str, Pipeline, Pipeline]) -> None:
    broker, fast, generic = consumers
    events = stream()
    pub = Publisher(broker)
    try:
        # Both subscriptions must be live before the stream starts: kombu subscribes on its
        # first poll. A custom event type has no handler, so it only shows in event_types.
        deadline = time.monotonic() + DEADLINE
        while not (seen(fast, WARMUP) and seen(generic, WARMUP)):
            assert time.monotonic() < deadline, "consumers did not subscribe"
            pub.send("celery@warmup", WARMUP, {})
            time.sleep(0.1)
        for host, kind, fields in events:
            pub.send(host, kind, fields)
        pub.flush()
        pub.pickle_message()
    finally:
        pub.close()

    expected = len(events)
    wait_until(lambda: total(fast) >= expected and total(generic) >= expected
               and fast.state.invalid.get("content_type") and generic.state.invalid.get(
                   "content_type"), f"{expected} events through both paths")
    time.sleep(0.3)  # anything extra (a duplicate) would show up now
    a, b = snapshot(fast), snapshot(generic)

    assert total(fast) == total(generic) == expected
    assert a["invalid"]["content_type"] == 1
    for key in a:
        assert a[key] == b[key], f"{key} differs between the Redis fast path and kombu"
    # The stream exercised what it is meant to.
    assert set(a["event_types"]) >= {"task-sent", "task-received", "task-started",
                                     "task-succeeded", "task-failed", "task-retried",
                                     "task-rejected", "task-revoked", "worker-online",
                                     "worker-heartbeat", "worker-offline"}
    assert a["counters"][m.TASK_REVOKED.key] and a["counters"][m.TASK_RETRIED.key]
    assert a["tracked"], "tasks whose terminal event was lost stay in flight"
    assert any(w[3] for w in a["workers"].values()) or any(
        t[4] for t in a["buffers"].values()) or a["counters"][m.TASK_STARTED.key]


@pytest.mark.parametrize("static", [(), (("cluster", "eu-1"), ("zone", 'a"b\\c'))])
def test_fast_text_rendering_is_byte_identical(static: tuple) -> None:
    """The /metrics fast renderer prints exactly what prometheus_client would."""
    state = State()
    now = time.time()
    for host, kind, fields in stream(seed=5, tasks=400):
        event = {"type": kind, "hostname": host, "timestamp": now, **fields}
        state.ingest([event], event["timestamp"] + 0.05)
    pipeline = Pipeline(state)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CeleryCollector(pipeline, static_labels=static))
    first = generate_text(registry)
    assert first == generate_latest(registry)
    assert generate_text(registry) == first, "label strings cached between scrapes"
    # Series removed from the state are gone from the next scrape too.
    with pipeline.lock:
        state.counters[m.TASK_SUCCEEDED.key].data.clear()
    assert generate_text(registry) == generate_latest(registry)
    assert b"celery_task_succeeded_total{" not in generate_text(registry)


def test_rendering_while_ingesting_gives_whole_lines() -> None:
    """Scrapes taken while another thread ingests stay valid expositions."""
    state = State()
    pipeline = Pipeline(state)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CeleryCollector(pipeline))
    events = stream(seed=3, tasks=600)
    stop = threading.Event()

    def ingest() -> None:
        for i in range(0, len(events), 8):
            if stop.is_set():
                return
            batch = [{"type": k, "hostname": h, **f} for h, k, f in events[i:i + 8]]
            with pipeline.lock:
                state.ingest(batch, time.time())

    thread = threading.Thread(target=ingest)
    thread.start()
    try:
        for _ in range(20):
            text = generate_text(registry).decode()
            assert text.endswith("\n")
            for line in text.splitlines():
                if not line.startswith("#"):
                    assert SAMPLE.match(line), line
                    float(line.rsplit(" ", 1)[1])
    finally:
        stop.set()
        thread.join(10)

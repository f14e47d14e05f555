"""The Redis consumer lets paced messages gather in the socket, and never holds a flood.

A private redis-server with Redis' default pub/sub output buffer limits; the real
RedisConsumer; a Pipeline that records each batch it is handed, and a record of each time
the consumer waits for messages to gather (the wait itself still happens).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import redis

from celery_events_exporter.config import Config
from celery_events_exporter.ingest import redis as redis_ingest
from celery_events_exporter.ingest.redis import RedisConsumer
from celery_events_exporter.pipeline import Pipeline
from celery_events_exporter.state import State
from tests.support.events import envelope, publish
from tests.support.servers import redis_server

pytestmark = pytest.mark.redis

DEADLINE = 60.0


class RecordingPipeline(Pipeline):
    def __init__(self) -> None:
        super().__init__(State())
        self.log: list[tuple[str, int]] = []  # ("batch", payload bytes) / ("gather", 0)
        self.consumer: RedisConsumer | None = None

    def envelopes(self, raws, now: float) -> None:  # type: ignore[override]
        self.log.append(("batch", sum(len(r) for r in raws)))
        super().envelopes(raws, now)

    def batches(self) -> list[int]:
        return [size for kind, size in self.log if kind == "batch"]


def heartbeat(i: int, pad: int = 0) -> bytes:
    return envelope({"type": "worker-heartbeat", "hostname": f"celery@gather-{i % 4}",
                     "timestamp": time.time(), "clock": i, "freq": 2.0, "active": 0,
                     "processed": i, "pad": "x" * pad})


@pytest.fixture
def consumer(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[redis.Redis, RecordingPipeline]]:
    pipeline = RecordingPipeline()
    real = redis_ingest._gather

    def gather() -> None:
        pipeline.log.append(("gather", 0))
        real()

    monkeypatch.setattr(redis_ingest, "_gather", gather)
    with redis_server() as srv:
        consumer = RedisConsumer(Config(broker_url=srv.url, ingest="redis"), pipeline)
        consumer.start()
        pipeline.consumer = consumer
        client = redis.Redis(port=srv.port)
        try:
            deadline = time.monotonic() + DEADLINE
            while client.pubsub_numpat() < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.pubsub_numpat() == 1, "the consumer did not subscribe"
            yield client, pipeline
        finally:
            consumer.stop()
            client.close()
        assert not (consumer.thread and consumer.thread.is_alive()), "consumer hung"


def wait_for(pipeline: RecordingPipeline, events: int) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if pipeline.state.event_types.get("worker-heartbeat", 0) >= events:
            return
        time.sleep(0.05)
    raise AssertionError(f"only {pipeline.state.event_types} of {events} arrived")


def test_paced_messages_are_read_many_at_a_time(consumer) -> None:
    client, pipeline = consumer
    for i in range(300):  # ~1 ms apart: one message per read without gathering
        publish(client, [heartbeat(i, pad=900)])
        time.sleep(0.001)
    wait_for(pipeline, 300)
    log = pipeline.log
    batches = pipeline.batches()
    # Each wait gathers 20-65 KB here: more than a read without a wait needs to count
    # as large, less than one after a wait needs. So every read is followed by another wait.
    alone = [i for i, (kind, _) in enumerate(log[:-1])
             if kind == "batch" and log[i + 1][0] != "gather"]
    assert not alone, (alone, log)
    # ~0.3-0.6 s of traffic in waits of 50 ms: about ten reads (the machine may be slow).
    assert len(batches) <= 60, batches


def test_a_flood_is_never_held_and_nothing_is_lost(consumer) -> None:
    client, pipeline = consumer
    consumer = pipeline.consumer
    assert consumer is not None
    payloads = [heartbeat(i, pad=900) for i in range(20_000)]  # ~25 MB at ~20k/s
    for start in range(0, len(payloads), 100):
        publish(client, payloads[start:start + 100])
        time.sleep(0.005)
    wait_for(pipeline, len(payloads))
    assert pipeline.state.event_types["worker-heartbeat"] == len(payloads), "lost events"
    assert pipeline.reconnects == 0 and pipeline.connected, "Redis dropped the subscriber"
    biggest = max(len(p) for p in payloads)
    log = pipeline.log

    def limit(i: int) -> int:  # a read after a wait holds the wait's traffic
        waited = i > 0 and log[i - 1][0] == "gather"
        return consumer.after_wait_limit if waited else redis_ingest.GATHER_BELOW

    # a batch may end with a message begun in the read before: one message of slack
    large = [i for i, (kind, size) in enumerate(log)
             if kind == "batch" and size >= limit(i) + biggest]
    assert large, "the flood never filled a read: nothing was tested"
    held = [i for i in large if i + 1 < len(log) and log[i + 1][0] == "gather"]
    assert not held, f"{len(held)} of {len(large)} large reads were followed by a wait"


@pytest.mark.parametrize("requested", [16 << 10, 256 << 10, 8 << 20])
def test_a_read_after_a_wait_counts_as_large_below_what_the_socket_can_hold(
        requested: int) -> None:
    """Hosts cap receive buffers (net.core.rmem_max): with a small one, waiting until a
    read after a wait reaches the fixed limit would let Redis' output buffer for us grow."""
    a, b = socket.socketpair()
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, requested)
        held = a.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        limit = redis_ingest._after_wait_limit(a)
        assert redis_ingest.GATHER_BELOW <= limit <= redis_ingest.GATHER_BELOW_AFTER_WAIT
        assert limit <= max(redis_ingest.GATHER_BELOW, held // 4)
        if held // 4 >= redis_ingest.GATHER_BELOW_AFTER_WAIT:  # room: the full limit
            assert limit == redis_ingest.GATHER_BELOW_AFTER_WAIT
    finally:
        a.close()
        b.close()

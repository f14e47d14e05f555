"""The Redis consumer lets paced messages gather in the socket, and never holds a flood.

A private redis-server with Redis' default pub/sub output buffer limits; the real
RedisConsumer; a Pipeline that records each batch it is handed, and a record of each time
the consumer waits for messages to gather (the wait itself still happens).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from exporter.config import Config
from exporter.ingest import redis as redis_ingest
from exporter.ingest.redis import RedisConsumer
from exporter.pipeline import Pipeline
from exporter.state import State
from tests.support.events import envelope, publish
from tests.support.servers import redis_server

pytestmark = pytest.mark.redis

DEADLINE = 60.0


class RecordingPipeline(Pipeline):
    def __init__(self) -> None:
        super().__init__(State())
        self.log: list[tuple[str, int]] = []  # ("batch", payload bytes) / ("gather", 0)

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
    for i in range(200):  # 2 ms apart: one message per read without gathering
        publish(client, [heartbeat(i)])
        time.sleep(0.002)
    wait_for(pipeline, 200)
    batches = pipeline.batches()
    assert sum(1 for kind, _ in pipeline.log if kind == "gather") >= len(batches) - 1
    # ~0.4 s of traffic in waits of 50 ms: about ten reads (the machine may be slow).
    assert len(batches) <= 60, batches


def test_a_flood_is_never_held_and_nothing_is_lost(consumer) -> None:
    client, pipeline = consumer
    payloads = [heartbeat(i, pad=900) for i in range(20_000)]  # ~25 MB, flat out
    for start in range(0, len(payloads), 2000):
        publish(client, payloads[start:start + 2000])
    wait_for(pipeline, len(payloads))
    assert pipeline.state.event_types["worker-heartbeat"] == len(payloads), "lost events"
    assert pipeline.reconnects == 0 and pipeline.connected, "Redis dropped the subscriber"
    biggest = max(len(p) for p in payloads)
    large = [i for i, (kind, size) in enumerate(pipeline.log)
             if kind == "batch" and size >= redis_ingest.GATHER_BELOW + biggest]
    assert large, "the flood never filled a read: nothing was tested"
    held = [i for i in large if i + 1 < len(pipeline.log) and pipeline.log[i + 1][0] == "gather"]
    assert not held, f"{len(held)} of {len(large)} large reads were followed by a wait"

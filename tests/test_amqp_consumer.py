"""The lean AMQP consumer (exporter/ingest/amqp.py) on a real private RabbitMQ node.

What it must keep from the kombu consumer: the queue exactly as declared there (exclusive,
fresh name per connection, Celery's TTL, expiry and byte cap), a message without content
type counted and dropped while the consumer goes on, a large body over several frames, and
the reconnect loop when the connection is cut or the broker closes it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid

import pytest
from amqp import Connection as AmqpConnection
from amqp.basic_message import Message
from celery import Celery
from kombu.clocks import LamportClock

from celery_events_exporter.config import Config
from celery_events_exporter.ingest import make_consumer
from celery_events_exporter.ingest.amqp import AmqpConsumer
from celery_events_exporter.ingest.kombu import QUEUE_EXPIRES, QUEUE_MAX_BYTES, QUEUE_TTL
from celery_events_exporter.pipeline import Pipeline
from celery_events_exporter.state import State
from tests.support.procs import wait_until
from tests.support.servers import RabbitServer
from tests.test_amqp_queue_properties import EVENT_PREFIX, _args, list_queues

pytestmark = pytest.mark.amqp


@pytest.fixture
def rabbit(rabbit_srv: RabbitServer | None) -> RabbitServer:
    if rabbit_srv is None:
        pytest.skip("CEE_TEST_AMQP_URL names an outside broker: rabbitmqctl cannot reach it")
    return rabbit_srv


def _consumer(url: str, exchange: str) -> tuple[AmqpConsumer, Pipeline]:
    pipeline = Pipeline(State())
    consumer = make_consumer(Config(broker_url=url, events_exchange=exchange), pipeline)
    assert isinstance(consumer, AmqpConsumer)
    return consumer, pipeline


def _dispatch(url: str, exchange: str, events: list[tuple[str, dict]]) -> None:
    """Through Celery's own EventDispatcher, as a worker sends them."""
    app = Celery(broker=url)
    app.conf.event_exchange = exchange
    with app.connection_for_write() as conn:
        d = app.events.Dispatcher(connection=conn, hostname="celery@amqp-test")
        d.clock = LamportClock()
        for kind, fields in events:
            d.send(kind, **fields)
        d.close()


def _raw_publish(url: str, exchange: str, body: bytes, **props: object) -> None:
    """A foreign publisher: py-amqp straight, properties as given (none at all, here)."""
    host = url.split("@", 1)[1].split("/", 1)[0]
    with AmqpConnection(host=host, userid="guest", password="guest") as conn:
        ch = conn.channel()
        ch.basic_publish(Message(body, **props), exchange=exchange, routing_key="task.x")


def _succeeded(state: State) -> int:
    return state.event_types.get("task-succeeded", 0)


def test_queue_as_declared_and_a_message_without_content_type_dropped(
        rabbit: RabbitServer) -> None:
    exchange = f"celeryev.lean{uuid.uuid4().hex[:8]}"
    consumer, pipeline = _consumer(rabbit.url, exchange)
    consumer.start()
    try:
        wait_until(lambda: pipeline.connected, 30, what="the consumer to connect")
        queues = list_queues(rabbit)
        assert consumer.queue_name.startswith(EVENT_PREFIX)
        q = queues[consumer.queue_name]
        assert (q["durable"], q["exclusive"], q["auto_delete"]) == (False, True, True), q
        args = _args(q)
        assert args.get("x-message-ttl") == int(QUEUE_TTL * 1000), args
        assert args.get("x-expires") == int(QUEUE_EXPIRES * 1000), args
        assert args.get("x-max-length-bytes") == QUEUE_MAX_BYTES, args

        _raw_publish(rabbit.url, exchange, b'{"type": "task-succeeded"}')  # no content type
        big = "x" * 300_000  # over RabbitMQ's default frame_max: several body frames
        _dispatch(rabbit.url, exchange, [
            ("task-succeeded", {"uuid": str(uuid.uuid4()), "result": big, "runtime": 0.1}),
            *[("task-succeeded", {"uuid": str(uuid.uuid4()), "runtime": 0.1})
              for _ in range(50)]])
        wait_until(lambda: _succeeded(pipeline.state) == 51, 30, what="51 events")
        assert {k: v for k, v in pipeline.state.invalid.items() if v} == {"content_type": 1}
        assert consumer.thread is not None and consumer.thread.is_alive()
        assert pipeline.reconnects == 0
    finally:
        consumer.stop()
    assert consumer.thread is not None and not consumer.thread.is_alive()


def test_cut_connection_and_broker_close_reconnect_with_a_fresh_queue(
        rabbit: RabbitServer) -> None:
    exchange = f"celeryev.lean{uuid.uuid4().hex[:8]}"
    consumer, pipeline = _consumer(rabbit.url, exchange)
    consumer.start()
    try:
        wait_until(lambda: pipeline.connected, 30, what="the consumer to connect")
        first = consumer.queue_name
        # The socket cut under the reader (what a dead network looks like to recv).
        consumer.close()
        wait_until(lambda: pipeline.connected and consumer.queue_name != first, 30,
                   what="a reconnect")
        assert pipeline.reconnects == 1
        second = consumer.queue_name
        assert second.startswith(EVENT_PREFIX)
        # The broker closes the connection (connection.close frame with its reason).
        exe = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
        subprocess.run([exe, "-n", rabbit.name, "close_all_connections", "test says bye"],
                       env=rabbit._env(), check=True, capture_output=True, timeout=60)
        wait_until(lambda: pipeline.reconnects == 2 and pipeline.connected, 60,
                   what="a reconnect after the broker closed us")
        assert consumer.queue_name not in (first, second)
        _dispatch(rabbit.url, exchange, [("task-succeeded", {"uuid": str(uuid.uuid4())})])
        wait_until(lambda: _succeeded(pipeline.state) == 1, 30, what="an event after it")
        wait_until(lambda: set(list_queues(rabbit)) & {first, second} == set(), 30,
                   what="the old queues to go with their connections")
    finally:
        consumer.stop()


def test_stop_ends_the_thread_at_once_and_the_queue_goes(rabbit: RabbitServer) -> None:
    consumer, pipeline = _consumer(rabbit.url, f"celeryev.lean{uuid.uuid4().hex[:8]}")
    consumer.start()
    wait_until(lambda: pipeline.connected, 30, what="the consumer to connect")
    name = consumer.queue_name
    t = time.monotonic()
    consumer.stop()
    assert consumer.thread is not None and not consumer.thread.is_alive()
    assert time.monotonic() - t < 5  # stop() joins with a 5 s timeout: it did not time out
    wait_until(lambda: name not in list_queues(rabbit), 30, what="the queue to go")


@pytest.mark.parametrize(("url", "ingest", "expected"), [
    ("amqp://guest:guest@127.0.0.1:5672//", "auto", "AmqpConsumer"),
    ("pyamqp://guest:guest@127.0.0.1:5672//", "auto", "AmqpConsumer"),
    ("amqp://guest:guest@127.0.0.1:5672//", "kombu", "KombuConsumer"),
    # Not yet tested behind TLS: stays on kombu.
    ("amqps://guest:guest@127.0.0.1:5671//", "auto", "KombuConsumer"),
])
def test_which_consumer_a_url_gets(url: str, ingest: str, expected: str) -> None:
    consumer = make_consumer(Config(broker_url=url, ingest=ingest), Pipeline(State()))
    assert type(consumer).__name__ == expected

"""The generic path through kombu: RabbitMQ (topic exchange, own exclusive queue) and
any other transport kombu speaks. Bodies are decoded by our JSON decoder, never by
kombu's serializer registry, so a pickle message is counted and dropped, not loaded.

The event queue is declared like Celery 5.7's own event receiver declares its queue
(celery/events/receiver.py: exclusive, event_queue_ttl 5 s, event_queue_expires 60 s):
RabbitMQ 4.3 refuses transient non-exclusive queues (deprecated feature
`transient_nonexcl_queues`), and an exclusive queue is never shared nor left behind.
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Callable
from time import sleep as _sleep
from typing import Any

from kombu import Connection, Exchange, Message, Queue
from kombu import Consumer as KombuMessageConsumer

from celery_events_exporter.config import Config
from celery_events_exporter.ingest.base import Consumer
from celery_events_exporter.pipeline import Pipeline

# Celery's event_queue_ttl: an event still queued after 5 s is stale for a live view, and
# a stalled exporter must not make the broker hoard the whole fleet's stream for it.
QUEUE_TTL = 5.0
QUEUE_EXPIRES = 60.0  # Celery's event_queue_expires
QUEUE_MAX_LENGTH = 1_000_000
# A byte cap as well: task events carry args/kwargs reprs and exceptions, so a count alone
# does not bound the broker's memory. The oldest events go first (drop-head).
QUEUE_MAX_BYTES = 64 << 20
QUEUE_PREFIX = "celeryev.celery-events-exporter."
READ_AHEAD = 1 << 16
DRAIN_TIMEOUT = 1.0
COALESCE_BYTES = 8 << 10
COALESCE_SECONDS = 0.001


class KombuConsumer(Consumer):
    name = "kombu"

    def __init__(self, config: Config, pipeline: Pipeline) -> None:
        super().__init__(config, pipeline)
        self.queue_name = ""
        self._conn: Connection | None = None

    def _queue(self, conn: Connection) -> Queue:
        # Redis turns the event exchange into a fanout one; everywhere else it is a topic.
        kind = "fanout" if conn.transport.driver_type == "redis" else "topic"
        exchange = Exchange(self.config.events_exchange, type=kind)
        # A fresh name per connection: after a network cut the broker may keep the old
        # connection (and its exclusive queue) until its heartbeat times out, and declaring
        # that name again from the new connection would fail with RESOURCE_LOCKED.
        self.queue_name = f"{QUEUE_PREFIX}{uuid.uuid4()}"
        return Queue(self.queue_name, exchange=exchange, routing_key="#", durable=False,
                     auto_delete=True, exclusive=True, message_ttl=QUEUE_TTL,
                     expires=QUEUE_EXPIRES, max_length=QUEUE_MAX_LENGTH,
                     max_length_bytes=QUEUE_MAX_BYTES)

    def consume(self) -> None:
        conn = self._conn = Connection(self.config.broker_url,
                                       transport_options=self.config.transport_options,
                                       connect_timeout=5, heartbeat=30)
        try:
            conn.ensure_connection(max_retries=1)
            _tune(conn, DRAIN_TIMEOUT)
            pipeline = self.pipeline
            clock = time.time
            channel = conn.default_channel
            queue = self._queue(conn)
            if conn.transport.driver_type == "amqp":
                # py-amqp's messages straight to us: kombu's Message wrapper would cost
                # about as much as our whole decode.
                bound = queue(channel)
                bound.declare()
                channel.basic_consume(queue=bound.name, no_ack=True,
                                      callback=amqp_on_message(pipeline, clock))
                consumer = contextlib.nullcontext()
            else:
                consumer = KombuMessageConsumer(channel, queues=[queue], no_ack=True,
                                                on_message=kombu_on_message(pipeline, clock),
                                                accept=[])
            with consumer:
                pipeline.set_connected(True, clock())
                next_beat = 0.0
                while not self.stopping.is_set():
                    try:
                        conn.drain_events(timeout=DRAIN_TIMEOUT)
                    except TimeoutError:
                        pipeline.idle(clock())
                        conn.heartbeat_check()
                        continue
                    # A busy stream never times out: keep heartbeats going regardless.
                    now = clock()
                    if now >= next_beat:
                        next_beat = now + 1.0
                        conn.heartbeat_check()
        finally:
            self._conn = None
            conn.release()

    def close(self) -> None:
        conn = self._conn
        if conn is not None:
            try:
                # The client's own connection (py-amqp: its transport holds the socket);
                # `conn.connection` would open one if there were none.
                raw = getattr(conn, "_connection", None)
                sock = getattr(getattr(raw, "transport", None), "sock", None)
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
            except Exception:  # closing from another thread is best effort
                pass


def amqp_on_message(pipeline: Pipeline, clock: Callable[[], float]) -> Callable[[Any], None]:
    """The callback for py-amqp's own messages (amqp.basic_message.Message)."""
    body = pipeline.body

    def on_message(message: Any) -> None:
        # `message.content_type` raises AttributeError when the publisher set no content
        # type (py-amqp looks properties up on attribute access), which would tear the
        # connection down; from the dict it is None, counted as invalid and dropped.
        body(message.body, message.properties.get("content_type"), clock())

    return on_message


def kombu_on_message(pipeline: Pipeline,
                     clock: Callable[[], float]) -> Callable[[Message], None]:
    """The callback for kombu's Message (every transport but py-amqp's)."""
    body = pipeline.body

    def on_message(message: Message) -> None:
        body(message.body, message.content_type, clock())

    return on_message


class _ReadAhead:
    """py-amqp reads each frame with three exact-size recv() calls (nine per message, each
    with its own poll for the timeout); this serves them from one large recv instead.

    After a read that brought less than COALESCE_BYTES it waits COALESCE_SECONDS before
    the next one, so a steady trickle is read a few messages per wake-up rather than one:
    at most a millisecond of delay, for a fraction of the per-message system calls."""

    __slots__ = ("buf", "pos", "recv", "small")

    def __init__(self, recv) -> None:
        self.recv = recv
        self.buf = b""
        self.pos = 0
        self.small = False

    def __call__(self, n: int) -> bytes:
        buf, pos = self.buf, self.pos
        if pos >= len(buf):
            if self.small:
                _sleep(COALESCE_SECONDS)
            buf = self.recv(n if n > READ_AHEAD else READ_AHEAD)
            if not buf:
                return buf
            self.small = len(buf) < COALESCE_BYTES
            self.buf = buf
            pos = 0
        self.pos = pos + n
        return buf[pos:pos + n]


def _tune(conn: Connection, timeout: float) -> None:
    """Buffer reads on a plain-TCP py-amqp connection (TLS reads are already buffered),
    and give its socket the drain timeout for good: py-amqp sets and restores the timeout
    around every frame it reads otherwise (four fcntl calls per frame)."""
    try:
        from amqp.transport import TCPTransport
    except ImportError:
        return
    transport = getattr(conn.connection, "transport", None)
    if type(transport) is TCPTransport and not isinstance(transport._quick_recv, _ReadAhead):
        transport._quick_recv = _ReadAhead(transport._quick_recv)
        sock = getattr(transport, "sock", None)
        if sock is not None:
            sock.settimeout(timeout)

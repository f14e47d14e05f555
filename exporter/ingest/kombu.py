"""The generic path through kombu: RabbitMQ (topic exchange, own auto-delete queue) and
any other transport kombu speaks. Bodies are decoded by our JSON decoder, never by
kombu's serializer registry, so a pickle message is counted and dropped, not loaded.
"""

from __future__ import annotations

import socket
import time
import uuid

from kombu import Connection, Exchange, Queue
from kombu import Consumer as KombuMessageConsumer

from exporter.config import Config
from exporter.ingest.base import Consumer
from exporter.pipeline import Pipeline

QUEUE_TTL = 60.0
QUEUE_EXPIRES = 60.0
QUEUE_MAX_LENGTH = 1_000_000


class KombuConsumer(Consumer):
    name = "kombu"

    def __init__(self, config: Config, pipeline: Pipeline) -> None:
        super().__init__(config, pipeline)
        self.queue_name = f"celeryev.celery-events-exporter.{uuid.uuid4()}"
        self._conn: Connection | None = None

    def _queue(self, conn: Connection) -> Queue:
        # Redis turns the event exchange into a fanout one; everywhere else it is a topic.
        kind = "fanout" if conn.transport.driver_type == "redis" else "topic"
        exchange = Exchange(self.config.events_exchange, type=kind)
        return Queue(self.queue_name, exchange=exchange, routing_key="#", durable=False,
                     auto_delete=True, message_ttl=QUEUE_TTL, expires=QUEUE_EXPIRES,
                     max_length=QUEUE_MAX_LENGTH)

    def consume(self) -> None:
        conn = self._conn = Connection(self.config.broker_url,
                                       transport_options=self.config.transport_options,
                                       connect_timeout=5, heartbeat=30)
        try:
            conn.ensure_connection(max_retries=1)
            pipeline = self.pipeline
            body = pipeline.body
            clock = time.time

            def on_message(message) -> None:  # kombu.Message
                body(message.body, message.content_type, clock())

            with KombuMessageConsumer(conn.default_channel, queues=[self._queue(conn)],
                                      no_ack=True, on_message=on_message, accept=[]):
                pipeline.set_connected(True, clock())
                while not self.stopping.is_set():
                    try:
                        conn.drain_events(timeout=1.0)
                    except TimeoutError:
                        pipeline.idle(clock())
                        conn.heartbeat_check()
        finally:
            self._conn = None
            conn.release()

    def close(self) -> None:
        conn = self._conn
        if conn is not None:
            try:
                sock = conn.transport.sock if hasattr(conn.transport, "sock") else None
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
            except Exception:  # closing from another thread is best effort
                pass

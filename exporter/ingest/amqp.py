"""The lean AMQP path (amqp:// URLs; amqps:// stays on kombu): py-amqp (through kombu)
opens the connection and declares the queue and the consumer; after that the socket is
read here, in large reads, by a minimal frame reader (exporter/ingest/amqpframes.py) that
hands a read's message bodies to the pipeline in one batch. py-amqp's per-frame reads,
method parsing, property decoding and Message objects were most of the AMQP path's cost.

The queue is the one the kombu consumer declares (exclusive, a fresh name per connection,
Celery's 5 s message TTL, expiry, count and byte caps): see exporter/ingest/kombu.py.
Deliveries are no-ack, as before: the queue's TTL and caps bound what the broker holds.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from time import sleep as _sleep
from typing import Any

from kombu import Connection

from celery_events_exporter.config import Config
from celery_events_exporter.ingest.amqpframes import HEARTBEAT, FrameReader
from celery_events_exporter.ingest.base import Consumer
from celery_events_exporter.ingest.kombu import DRAIN_TIMEOUT, KombuConsumer
from celery_events_exporter.pipeline import Pipeline

READ_SIZE = 1 << 18
# After a read smaller than COALESCE_BYTES (a trickle, not a flood) wait COALESCE_SECONDS
# before the next one, so a trickle is read a few messages per wake-up; never after a
# large read. The kombu consumer's values: a longer wait (4 ms was tried) changed what the
# state counts for a duplicated terminal event in the conformance suite, which needs
# understanding in exporter/state.py before the wait can grow.
COALESCE_BYTES = 8 << 10
COALESCE_SECONDS = 0.001
# connection.close(200, "OK", 0, 0) on channel 0: said on a clean stop, not waited for.
_CLOSE_OK_PAYLOAD = struct.pack(">HHHB", 10, 50, 200, 2) + b"OK" + struct.pack(">HH", 0, 0)
CLOSE_FRAME = struct.pack(">BHI", 1, 0, len(_CLOSE_OK_PAYLOAD)) + _CLOSE_OK_PAYLOAD + b"\xce"


class AmqpConsumer(Consumer):
    name = "amqp"

    def __init__(self, config: Config, pipeline: Pipeline) -> None:
        super().__init__(config, pipeline)
        self.queue_name = ""
        self._sock: socket.socket | None = None
        # The queue's declaration lives in one place: the kombu consumer's.
        self._declarer = KombuConsumer(config, pipeline)

    def consume(self) -> None:
        conn = Connection(self.config.broker_url, transport_options=self.config.transport_options,
                          connect_timeout=5, heartbeat=30)
        clean = False
        try:
            conn.ensure_connection(max_retries=1)
            if conn.transport.driver_type != "amqp":
                raise RuntimeError("the lean AMQP consumer needs py-amqp (amqp:// URLs)")
            raw = conn.connection  # amqp.Connection
            channel = conn.default_channel
            bound = self._declarer._queue(conn)(channel)
            bound.declare()
            self.queue_name = self._declarer.queue_name
            channel.basic_consume(queue=bound.name, no_ack=True, callback=_unexpected)
            transport = raw.transport
            sock = self._sock = transport.sock
            # Whatever py-amqp read past consume-ok (normally nothing) comes first.
            leftover = bytes(getattr(transport, "_read_buffer", b"") or b"")
            self._read(sock, transport, channel.channel_id, leftover,
                       float(raw.heartbeat or 0))
            clean = True
        finally:
            self._sock = None
            _shut(conn, clean)

    def _read(self, sock: Any, transport: Any, channel_id: int, leftover: bytes,
              heartbeat: float) -> None:
        pipeline = self.pipeline
        bodies = pipeline.bodies
        clock = time.time
        monotonic = time.monotonic
        reader = FrameReader(channel_id)
        feed = reader.feed
        recv = sock.recv
        stopping = self.stopping
        sock.settimeout(DRAIN_TIMEOUT)
        out: list = []
        if leftover:
            feed(leftover, out)
        pipeline.set_connected(True, clock())
        # Heartbeats: ours go out every heartbeat/2 s whatever the traffic (a no-ack
        # consumer sends nothing else); theirs, or any byte, must come within 2 beats.
        beat = heartbeat / 2 if heartbeat else 0.0
        now = monotonic()
        next_beat = now + beat
        last_recv = now
        small = False
        while not stopping.is_set():
            if small:
                # A small read: let a trickle gather for a millisecond, so it is read
                # a few messages per wake-up. Never after a large read: a flood never waits.
                _sleep(COALESCE_SECONDS)
            try:
                data = recv(READ_SIZE)
            except TimeoutError:
                data = None
                pipeline.idle(clock())
            now = monotonic()
            if data is not None:
                if not data:
                    raise ConnectionError("the broker closed the connection")
                last_recv = now
                small = len(data) < COALESCE_BYTES
                feed(data, out)
                if out:
                    bodies(out, clock())
                    out = []
            else:
                small = False
            if beat:
                if now >= next_beat:
                    next_beat = now + beat
                    transport.write(HEARTBEAT)
                if now - last_recv > 2 * heartbeat:
                    raise ConnectionError(f"no heartbeat from the broker for "
                                          f"{now - last_recv:.0f}s")

    def close(self) -> None:
        sock = self._sock
        if sock is not None:
            # Closing from another thread is best effort.
            with contextlib.suppress(Exception):
                sock.shutdown(socket.SHUT_RDWR)


def _unexpected(message: Any) -> None:
    """py-amqp's callback for a delivery: never called, the frames are read by us."""


def _shut(conn: Connection, clean: bool) -> None:
    """Close without py-amqp reading again: its reader may be mid-frame in our stream.
    On a clean stop the broker is told (connection.close); close-ok is not waited for."""
    raw = getattr(conn, "_connection", None)
    if clean and raw is not None:
        # The socket may already be gone: the broker notices either way.
        with contextlib.suppress(Exception):
            raw.transport.write(CLOSE_FRAME)
    with contextlib.suppress(Exception):
        conn.collect()

"""The Redis fast path: one socket, PSUBSCRIBE to kombu's event channel, hiredis parsing.

kombu's pub/sub consumer costs several times our whole per-event budget; here a read
drains whatever the socket holds, parses it in C, and hands the payloads to the pipeline
under one lock. Redis drops a subscriber whose output buffer overflows, so speed here is
what keeps events from being lost.

At everyday rates (a few hundred to a few thousand events per second, one per message)
each read would carry one message, and the wake-up around it (recv, the lock, a clock
read, and a cache gone cold since the last one) costs several times the event itself. So
after a small read the loop sleeps GATHER_SECONDS and lets the next messages gather in the
socket: the following read takes them all at once. After a large read it never waits, so
a flood is drained flat out. "Large" after a wait is at most a quarter of the socket's
receive buffer as the kernel reports it (which counts its bookkeeping too: about half of it
holds data): a smaller read proves the buffer was far from full, so Redis was holding
nothing back for us, and waiting again cannot let its output buffer for us grow.
"""

from __future__ import annotations

import contextlib
import socket
import time

import hiredis

from celery_events_exporter.config import Config
from celery_events_exporter.ingest.base import Consumer
from celery_events_exporter.pipeline import Pipeline
from celery_events_exporter.redisconf import RedisTarget, parse

READ_SIZE = 1 << 20
FEED_SIZE = 16 << 10
IDLE_TIMEOUT = 1.0
PING_AFTER = 15.0
PING_GRACE = 10.0
# Events reach the state at most this much later: invisible to a scrape every few seconds.
# At 500 events/s, 50 ms cost ~31 µs/event and 250 ms ~23 (benchmarks/paced.py); every
# event of a read shares its receive time, which the per-host clock-offset estimates take
# in, so the longer wait waits for a study of that effect (docs/performance.md).
GATHER_SECONDS = 0.05
# A read this large (~20 messages) amortises its wake-up by itself: no wait after it, so a
# flood, whose reads carry 60 KB and more at the publisher's pace, never waits.
GATHER_BELOW = 16 << 10
# After a wait, the read holds GATHER_SECONDS of traffic: it stays "small" up to what 50 ms
# of ~6k events/s bring, if the receive buffer allows (see `_after_wait_limit`).
GATHER_BELOW_AFTER_WAIT = 256 << 10


def _gather() -> None:
    time.sleep(GATHER_SECONDS)


def _after_wait_limit(sock: socket.socket) -> int:
    """What counts as a large read after a wait on this socket: at most a quarter of the
    receive buffer the kernel reports (net.core.rmem_max caps our request for 8 MiB: on
    hosts where it is 208 KiB, this is 104 KiB)."""
    try:
        size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    except OSError:
        return GATHER_BELOW
    return max(GATHER_BELOW, min(GATHER_BELOW_AFTER_WAIT, size // 4))


def _command(*args: str | bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RedisConsumer(Consumer):
    name = "redis"

    def __init__(self, config: Config, pipeline: Pipeline) -> None:
        super().__init__(config, pipeline)
        self.target: RedisTarget = parse(config.broker_url, config.transport_options)
        self.command, self.channel = self.target.event_subscription(config.events_exchange)
        self._sock: socket.socket | None = None
        self.after_wait_limit = GATHER_BELOW_AFTER_WAIT

    def _connect(self) -> socket.socket:
        t = self.target
        timeout = 5.0
        if t.unix_path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(t.unix_path)
        else:
            host, port = t.resolve(timeout)
            sock = socket.create_connection((host, port), timeout)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ctx = t.ssl_context()
            if ctx is not None:
                sock = ctx.wrap_socket(sock, server_hostname=host)
        # Ask for a large receive buffer: bursts wait in the kernel, not in Redis.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.after_wait_limit = _after_wait_limit(sock)
        reader = hiredis.Reader()
        if t.password is not None:
            args = ("AUTH", t.username, t.password) if t.username else ("AUTH", t.password)
            sock.sendall(_command(*args))
            self._expect(sock, reader, "AUTH")
        sock.sendall(_command(self.command, self.channel))
        self._expect(sock, reader, self.command)
        self._reader = reader
        return sock

    @staticmethod
    def _expect(sock: socket.socket, reader: hiredis.Reader, what: str) -> object:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            reply = reader.gets()
            if reply is not False:
                if isinstance(reply, Exception):
                    raise ConnectionError(f"{what} refused: {reply}")
                return reply
            data = sock.recv(65536)
            if not data:
                raise ConnectionError(f"connection closed during {what}")
            reader.feed(data)
        raise TimeoutError(f"no reply to {what}")

    def consume(self) -> None:
        sock = self._sock = self._connect()
        pipeline = self.pipeline
        pipeline.set_connected(True, time.time())
        try:
            self._loop(sock)
        finally:
            self._sock = None
            with contextlib.suppress(OSError):
                sock.close()

    def _loop(self, sock: socket.socket) -> None:
        reader = self._reader
        feed, gets = reader.feed, reader.gets
        pipeline = self.pipeline
        envelopes = pipeline.envelopes
        stopping = self.stopping
        # One buffer for every read: recv(READ_SIZE) would allocate (and trim) a fresh
        # 1 MiB object per call, ~12 µs each, while most reads carry a few messages.
        buf = bytearray(READ_SIZE)
        recv_into = sock.recv_into
        clock = time.time
        gather = _gather
        waited = False
        sock.settimeout(IDLE_TIMEOUT)
        last_data = time.monotonic()
        ping_sent = 0.0
        pattern = self.command == "PSUBSCRIBE"
        after_wait = self.after_wait_limit
        while not stopping.is_set():
            try:
                size = recv_into(buf)
            except TimeoutError:
                waited = False
                mono = time.monotonic()
                pipeline.idle(clock())
                # A silent socket may be a dead peer: a PING in subscribed mode proves it.
                if ping_sent and mono - ping_sent > PING_GRACE:
                    raise ConnectionError("Redis did not answer PING") from None
                if not ping_sent and mono - last_data > PING_AFTER:
                    sock.sendall(_command("PING"))
                    ping_sent = mono
                continue
            if not size:
                raise ConnectionError("Redis closed the connection (a subscriber that falls "
                                      "behind is dropped at client-output-buffer-limit pubsub)")
            batch = []
            append = batch.append
            # Feed hiredis in slices: it compacts its buffer as replies are taken, which
            # costs a copy of the whole unread rest each time, so a 1 MiB feed parsed
            # at once is ~10x dearer per event than the same bytes fed FEED_SIZE at a time.
            for offset in range(0, size, FEED_SIZE):
                feed(buf, offset, min(FEED_SIZE, size - offset))
                reply = gets()
                while reply is not False:
                    if pattern and len(reply) == 4:
                        append(reply[3])
                    elif not pattern and len(reply) == 3 and reply[0] == b"message":
                        append(reply[2])
                    elif isinstance(reply, Exception):
                        raise ConnectionError(f"Redis error: {reply}")
                    reply = gets()
            last_data = time.monotonic()
            ping_sent = 0.0
            if batch:
                envelopes(batch, clock())
            waited = size < (after_wait if waited else GATHER_BELOW)
            if waited:
                gather()

    def close(self) -> None:
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

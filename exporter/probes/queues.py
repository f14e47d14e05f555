"""Queue length and consumer probes: Redis lists, AMQP passive declares, RabbitMQ's API."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterable
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from celery_events_exporter.probes import Probe, ProbeResults
from celery_events_exporter.redisconf import RedisTarget

QueueSource = Callable[[], Iterable[str]]


class RedisQueueProbe(Probe):
    """LLEN of every priority list of every known queue; a missing list is an empty queue."""

    name = "redis_queues"

    def __init__(self, target: RedisTarget, queues: QueueSource, interval: float,
                 timeout: float) -> None:
        self.target = target
        self.queues = queues
        self.interval = interval
        self.timeout = timeout
        self._client = None

    def run(self, results: ProbeResults) -> None:
        names = sorted(set(self.queues()))
        if self._client is None:
            self._client = self.target.client(self.timeout)
        pipe = self._client.pipeline(transaction=False)
        spans = []
        for name in names:
            keys = self.target.queue_keys(name)
            for key in keys:
                pipe.llen(key)
            spans.append((name, len(keys)))
        try:
            replies = pipe.execute() if spans else []
        except Exception:
            self.close()
            raise
        lengths: dict[str, float] = {}
        i = 0
        for name, count in spans:
            lengths[name] = float(sum(replies[i:i + count]))
            i += count
        with results.lock:
            results.queues.length = lengths

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class AmqpQueueProbe(Probe):
    """Passive queue_declare per queue: ready messages and consumers, straight from RabbitMQ."""

    name = "amqp_queues"

    def __init__(self, broker_url: str, transport_options: dict, queues: QueueSource,
                 interval: float, timeout: float) -> None:
        self.broker_url = broker_url
        self.transport_options = transport_options
        self.queues = queues
        self.interval = interval
        self.timeout = timeout
        self._conn = None

    def _connection(self):  # -> kombu.Connection
        from kombu import Connection

        if self._conn is None:
            # read/write timeouts bound every wait for a reply frame: without them py-amqp
            # waits for ever on a broker that keeps the connection but stops answering.
            options = {"read_timeout": self.timeout, "write_timeout": self.timeout,
                       **self.transport_options}
            self._conn = Connection(self.broker_url, connect_timeout=self.timeout,
                                    transport_options=options)
            self._conn.ensure_connection(max_retries=1)
        return self._conn

    def run(self, results: ProbeResults) -> None:
        from amqp.exceptions import NotFound

        names = sorted(set(self.queues()))
        lengths: dict[str, float] = {}
        consumers: dict[str, float] = {}
        try:
            conn = self._connection()
            channel = conn.channel()
            for name in names:
                try:
                    _, messages, count = channel.queue_declare(queue=name, passive=True)
                except NotFound:
                    # The broker closed the channel; the queue does not exist, so it is empty.
                    lengths[name] = consumers[name] = 0.0
                    channel = conn.channel()
                    continue
                lengths[name], consumers[name] = float(messages), float(count)
            channel.close()
        except Exception:
            self.close()
            raise
        with results.lock:
            results.queues.length = lengths
            results.queues.consumers = consumers

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.release()
            finally:
                self._conn = None

    def abort(self) -> None:
        # release() would wait for the broker's close-ok; shutting the socket down does not.
        conn, self._conn = self._conn, None
        shutdown_socket(conn)


def shutdown_socket(conn) -> None:  # conn: kombu.Connection | None
    """Break a py-amqp connection from another thread, without talking to the broker."""
    raw = getattr(conn, "_connection", None)  # `conn.connection` would open one
    sock = getattr(getattr(raw, "transport", None), "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class ManagementProbe(Probe):
    """RabbitMQ management API: unacknowledged messages and consumer utilisation per queue."""

    name = "rabbitmq_management"

    def __init__(self, api_url: str, broker_url: str, interval: float, timeout: float,
                 ca_file: str | None = None) -> None:
        parts = urlsplit(api_url)
        self.auth = None
        if parts.username:
            self.auth = (unquote(parts.username), unquote(parts.password or ""))
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        base = urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))
        vhost = urlsplit(broker_url.split(";")[0]).path[1:] or "/"
        self.url = f"{base}/api/queues/{quote(unquote(vhost), safe='')}"
        self.interval = interval
        self.timeout = timeout
        self.verify: bool | str = ca_file or True
        self._session = None

    def run(self, results: ProbeResults) -> None:
        import requests

        if self._session is None:
            self._session = requests.Session()
        response = self._session.get(
            self.url, auth=self.auth, timeout=self.timeout, verify=self.verify,
            params={"columns": "name,messages_unacknowledged,consumer_utilisation"})
        response.raise_for_status()
        unacked: dict[str, float] = {}
        utilisation: dict[str, float] = {}
        for queue in response.json():
            name = queue.get("name")
            if not isinstance(name, str) or name.startswith("celeryev."):
                continue
            if isinstance(queue.get("messages_unacknowledged"), int | float):
                unacked[name] = float(queue["messages_unacknowledged"])
            if isinstance(queue.get("consumer_utilisation"), int | float):
                utilisation[name] = float(queue["consumer_utilisation"])
        with results.lock:
            results.queues.unacked = unacked
            results.queues.utilisation = utilisation

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

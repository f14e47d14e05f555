"""Worker facts only a broadcast can tell: pool size, prefetch limit, consumed queues.

`inspect` waits for replies, so it runs here on a slow timer, with a short timeout and a
reply limit, never on a scrape.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from urllib.parse import urlsplit

from celery_events_exporter.pipeline import Pipeline
from celery_events_exporter.probes import Probe, ProbeResults
from celery_events_exporter.state import apply_worker_probe

# Consecutive unanswered broadcasts stretch the interval up to this factor: each one costs
# every refusing worker a CRITICAL line in its log.
MAX_BACKOFF = 16


class NoReplies(RuntimeError):
    pass


class InspectProbe(Probe):
    name = "inspect"

    def __init__(self, broker_url: str, transport_options: dict, pipeline: Pipeline,
                 interval: float, timeout: float,
                 live_workers: Callable[[], int] | None = None) -> None:
        self.broker_url = broker_url
        self.transport_options = transport_options
        self.pipeline = pipeline
        self.base_interval = self.interval = interval
        self.timeout = timeout
        self.live_workers = live_workers
        self.app = self._new_app()

    def _new_app(self):  # -> celery.Celery
        from celery import Celery

        app = Celery("celery-events-exporter", broker=self.broker_url, set_as_current=False)
        options = dict(self.transport_options)
        if urlsplit(self.broker_url).scheme.split("+", 1)[0] in ("amqp", "amqps", "pyamqp"):
            # Bound every wait for a reply frame (a declare, the channel open): py-amqp
            # waits for ever on a broker that keeps the connection but stops answering.
            options = {"read_timeout": self.timeout, "write_timeout": self.timeout, **options}
        app.conf.broker_transport_options = options
        app.conf.broker_connection_timeout = self.timeout
        app.conf.broker_connection_retry_on_startup = False
        app.conf.broker_connection_max_retries = 0
        # Reply queues: exclusive, as Celery's default (RabbitMQ 4.3 refuses transient
        # non-exclusive queues); said here so that no environment can change it.
        app.conf.control_queue_exclusive = True
        app.conf.control_queue_durable = False
        return app

    def run(self, results: ProbeResults) -> None:
        limit = self.live_workers() if self.live_workers else None
        if limit == 0:
            return
        inspect = self.app.control.inspect(timeout=self.timeout, limit=limit or None)
        stats = inspect.stats() or {}
        queues = inspect.active_queues() or {}
        if limit and not stats and not queues:
            self.interval = min(self.interval * 2, self.base_interval * MAX_BACKOFF)
            raise NoReplies(
                f"none of the {limit} live workers answered inspect within {self.timeout:g}s "
                f"(next try in {self.interval:g}s). Workers that accept only signed messages "
                f"(task_serializer 'auth', app.setup_security()) refuse the exporter's "
                f"unsigned control messages and log 'Refusing to deserialize untrusted "
                f"content': run the exporter with --no-inspect for them. Otherwise the "
                f"workers are too busy to answer: raise --probe-timeout.")
        self.interval = self.base_interval
        with self.pipeline.lock:
            for hostname in set(stats) | set(queues):
                info = stats.get(hostname) or {}
                pool = info.get("pool") or {}
                size = pool.get("max-concurrency")
                prefetch = info.get("prefetch_count")
                names = queues.get(hostname)
                apply_worker_probe(
                    self.pipeline.state, hostname,
                    size if isinstance(size, int) else None,
                    prefetch if isinstance(prefetch, int) else None,
                    frozenset(q["name"] for q in names if isinstance(q, dict) and "name" in q)
                    if isinstance(names, list) else None)

    def conf(self, keys: tuple[str, ...],
             workers: list[str]) -> dict[str, dict[str, object]]:
        """These settings of the named workers (`inspect conf`, defaults included: a worker
        reports only what differs from Celery's defaults otherwise). Addressed by name: on
        RabbitMQ every app of the vhost shares the control exchange, and another app's
        workers would answer a broadcast too."""
        inspect = self.app.control.inspect(timeout=self.timeout, destination=workers,
                                           limit=len(workers))
        replies = inspect.conf(with_defaults=True) or {}
        return {host: {k: conf[k] for k in keys if k in conf}
                for host, conf in replies.items() if isinstance(conf, dict)}

    def close(self) -> None:
        self.app.close()

    def abort(self) -> None:
        # The blocked run keeps the old app; the next run gets a fresh one (fresh pools,
        # fresh reply queue name). Closing the old pool's sockets ends the blocked call
        # where it waits on one of them.
        old, self.app = self.app, self._new_app()
        with contextlib.suppress(Exception):
            old.pool.force_close_all(close_pool=False)

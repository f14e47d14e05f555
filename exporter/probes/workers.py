"""Worker facts only a broadcast can tell: pool size, prefetch limit, consumed queues.

`inspect` waits for replies, so it runs here on a slow timer, with a short timeout and a
reply limit, never on a scrape.
"""

from __future__ import annotations

from collections.abc import Callable

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
        from celery import Celery

        self.app = Celery("celery-events-exporter", broker=broker_url, set_as_current=False)
        self.app.conf.broker_transport_options = transport_options
        self.app.conf.broker_connection_retry_on_startup = False
        self.pipeline = pipeline
        self.base_interval = self.interval = interval
        self.timeout = timeout
        self.live_workers = live_workers

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

    def close(self) -> None:
        self.app.close()

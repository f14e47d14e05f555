"""The worker registry: liveness, buffer gauges and the facts `inspect` adds."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from celery_events_exporter.labels import Labeler
from celery_events_exporter.state.config import MAX_KEY, StateConfig
from celery_events_exporter.state.series import Series, Stamp


class Worker:
    __slots__ = ("active", "down_since", "events_missing", "freq", "gap_before", "gen",
                 "hostname", "label", "last_processed", "last_received", "last_seen", "pool",
                 "prefetch_limit", "prefetched", "queues", "said_goodbye", "scheduled", "seen",
                 "silent_beats", "sw_ident", "sw_sys", "sw_ver", "task_events", "up")

    def __init__(self, hostname: str, label: str) -> None:
        self.hostname = hostname
        self.label = label
        self.up = True
        # Down after worker-offline (a deploy, a scale-in) rather than silence (a crash).
        self.said_goodbye = False
        self.last_seen = 0.0  # wall clock: exported as the last heartbeat timestamp
        self.last_received = 0.0  # wall clock: last task-received (incidents: ghosts)
        self.seen = 0.0  # monotonic: what liveness is judged on
        self.down_since = 0.0  # monotonic
        self.freq = 2.0
        self.active: int | None = None
        self.prefetched = 0
        self.scheduled = 0
        self.gen = 0
        self.sw_ident = self.sw_ver = self.sw_sys = ""
        self.pool: int | None = None
        self.prefetch_limit: int | None = None
        self.queues: frozenset[str] = frozenset()
        self.task_events = False  # a task event arrived since the last full heartbeat
        self.last_processed: int | None = None
        self.silent_beats = 0
        self.events_missing = False
        # Set when our broker connection came back (monotonic time of the reconnect): the
        # next full heartbeat reconciles what we think the worker buffers.
        self.gap_before: float | None = None

    def drop_buffers(self) -> None:
        """Buffered messages go back to the broker when a worker goes away."""
        self.gen += 1
        self.prefetched = self.scheduled = 0


class Workers:
    def __init__(self, config: StateConfig, labels: Labeler, stamp: Stamp) -> None:
        self.config = config
        self.labels = labels
        self.stamp = stamp
        self.workers: dict[str, Worker] = {}
        self.dropped = 0
        # Told before a worker's buffers and executions are written off (see `running`).
        self.on_down: Callable[[Worker], None] | None = None

    def get(self, hostname: object, now: float) -> Worker:
        """The node an event came from, seen at `now` (up again if it was down)."""
        worker = self.workers.get(hostname)  # type: ignore[arg-type]
        if worker is None:
            # Both counted as a bad field by the caller.
            if type(hostname) is not str:
                raise TypeError
            if len(hostname) > MAX_KEY:
                raise ValueError
            if len(self.workers) >= self.config.max_series:
                # Runaway or hostile node names: count the event, do not track the node.
                self.dropped += 1
                return Worker(hostname, self.labels.worker(hostname))
            worker = self.workers[hostname] = Worker(hostname, self.labels.worker(hostname))
        elif not worker.up:
            # Any event proves the node is back; its buffers were dropped when it went down.
            worker.up = True
            worker.said_goodbye = False
        worker.last_seen = now
        worker.seen = self.stamp.mono
        return worker

    def down(self, worker: Worker) -> None:
        if self.on_down is not None:
            self.on_down(worker)
        worker.up = False
        worker.down_since = self.stamp.mono
        worker.active = 0
        worker.drop_buffers()

    def age(self, mono: float, counters: Iterable[Series]) -> None:
        """Silent nodes go down; nodes down for the retention go, with their series."""
        cfg = self.config
        for worker in list(self.workers.values()):
            if worker.up:
                timeout = cfg.worker_timeout or worker.freq * 2.0
                if mono > worker.seen + timeout:
                    self.down(worker)
            elif mono >= worker.down_since + cfg.worker_down_retention:
                self.remove(worker, counters)

    def remove(self, worker: Worker, counters: Iterable[Series]) -> None:
        del self.workers[worker.hostname]
        label = worker.label
        if any(w.label == label for w in self.workers.values()):
            return
        for series in counters:
            if "worker" in series.metric.labels:
                series.forget_worker(label, series.metric.labels.index("worker"))


class _HasWorkers(Protocol):
    workers: dict[str, Worker]
    labels: Labeler


def apply_worker_probe(state: _HasWorkers, hostname: str, pool: int | None,
                       prefetch_limit: int | None, queues: frozenset[str] | None) -> None:
    """Facts from `inspect` about a worker we already know from its events."""
    worker = state.workers.get(hostname)
    if worker is None:
        return
    if pool is not None:
        worker.pool = pool
    if prefetch_limit is not None:
        worker.prefetch_limit = prefetch_limit
    if queues is not None:
        worker.queues = frozenset(state.labels.queue(q) for q in queues)

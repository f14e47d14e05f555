"""State snapshot -> Prometheus metric families, rendered at scrape time.

The lock is held only to copy dict references; families are built outside it, so a
large scrape never stalls ingest for longer than a few dict copies.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from dataclasses import dataclass

import celery
import kombu
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from celery_events_exporter import __version__
from celery_events_exporter import metrics as m
from celery_events_exporter.beat.schedules import SKIP_REASONS
from celery_events_exporter.exposition import TaskCounter, TaskHistogram
from celery_events_exporter.exposition import (
    generate_text as generate_text,  # callers import it from here
)
from celery_events_exporter.pipeline import Pipeline
from celery_events_exporter.probes import ProbeResults
from celery_events_exporter.state import State

# Probes that do not measure queues: their runs say nothing about a queue being empty.
NOT_QUEUE_PROBES = frozenset({"inspect", "beat"})


@dataclass(slots=True, frozen=True)
class _WorkerRow:
    """One node as the scrape saw it, copied under the lock."""

    label: str
    hostname: str
    up: bool
    active: int | None
    prefetched: int
    scheduled: int
    last_seen: float
    sw_ver: str
    sw_ident: str
    sw_sys: str
    pool: int | None
    prefetch_limit: int | None
    events_missing: bool
    queues: frozenset[str]
    said_goodbye: bool
    last_received: float


@dataclass(slots=True)
class _WorkerGroup:
    """The nodes behind one worker label, summed (node counts are ints)."""

    nodes: int = 0
    up: float = 0.0
    active: float = 0.0
    prefetched: float = 0.0
    scheduled: float = 0.0
    last_seen: float = 0.0
    pool: float = 0.0
    limit: float = 0.0
    probed: int = 0
    events_missing: bool = False
    said_goodbye: int = 0
    last_received: float = 0.0
    queues: frozenset[str] = frozenset()


class CeleryCollector:
    def __init__(self, pipeline: Pipeline, probes: ProbeResults | None = None,
                 prefix: str = m.DEFAULT_PREFIX,
                 static_labels: tuple[tuple[str, str], ...] = ()) -> None:
        self.pipeline = pipeline
        self.probes = probes or ProbeResults()
        self.prefix = prefix
        self.static_names = tuple(k for k, _ in static_labels)
        self.static_values = tuple(v for _, v in static_labels)
        self.drop_worker = pipeline.state.config.labels.worker_mode == "none"
        self._le = {}
        self._text: dict[str, dict] = {}  # metric key -> series key -> rendered labels

    def describe(self) -> list[Metric]:
        # Registering must not render: nothing to declare up front.
        return []

    def _labels(self, metric: m.Metric) -> list[str]:
        names = list(metric.labels)
        if self.drop_worker and "worker" in names and not metric.key.startswith("worker_"):
            names.remove("worker")
        return [*names, *self.static_names]

    def _gauge(self, metric: m.Metric) -> GaugeMetricFamily:
        return GaugeMetricFamily(metric.full(self.prefix), metric.help,
                                 labels=self._labels(metric))

    def _counter(self, metric: m.Metric) -> CounterMetricFamily:
        return CounterMetricFamily(metric.family(self.prefix), metric.help,
                                   labels=self._labels(metric))

    def collect(self) -> Iterator[Metric]:
        state = self.pipeline.state
        with self.pipeline.lock:
            # Series no scrape has shown yet are shown at 0 this time (see state.series).
            cutoff = state.stamp.mono - state.config.new_series_delay
            counters = [(s.metric, s.data.copy(), s.take_fresh(cutoff), s.created)
                        for s in state.counters.values()]
            histograms = [(s.metric, s.bounds, s.data.copy(), s.take_fresh(cutoff), s.created,
                           s.exemplars.copy())
                          for s in state.histograms.values()]
            workers = [_WorkerRow(w.label if not self.drop_worker else w.hostname,
                                  w.hostname, w.up, w.active, w.prefetched, w.scheduled,
                                  w.last_seen, w.sw_ver, w.sw_ident, w.sw_sys, w.pool,
                                  w.prefetch_limit, w.events_missing, w.queues, w.said_goodbye,
                                  w.last_received)
                       for w in state.workers.values()]
            event_types = dict(state.event_types)
            invalid = dict(state.invalid)
            duplicates = dict(state.duplicates)
            evicted = dict(state.evicted)
            clamped = dict(state.clamped)
            offsets = state.clocks.estimates()
            dropped = state.series_dropped
            tracked = len(state.tasks)
            last_event, lag = state.last_event, state.lag
            missing = state.task_events_missing
            # Ages run to the state's last tick (at most a second behind): deterministic.
            running = state.running.snapshot(state.stamp.mono)
            waiting = self._waiting(state)
            last_sent = dict(state.last_sent)
            connected, reconnects = self.pipeline.connected, self.pipeline.reconnects
        static = self.static_values
        since = self.pipeline.started

        # The task families hold up to max_series label sets each: they render their own
        # text (see exporter.exposition) and build prometheus_client samples only when asked.
        for metric, data, zero, created in counters:
            worker_pos = -1
            if self.drop_worker and "worker" in metric.labels:
                worker_pos = metric.labels.index("worker")
            yield TaskCounter(metric.family(self.prefix), metric.help, self._labels(metric),
                              data, static, worker_pos, self._text.setdefault(metric.key, {}),
                              created, since, zero)

        for metric, bounds, data, zero, created, exemplars in histograms:
            les = [*(self._go(b) for b in bounds), "+Inf"]
            yield TaskHistogram(metric.full(self.prefix), metric.help, self._labels(metric),
                                data, static, les, self._text.setdefault(metric.key, {}),
                                created, since, exemplars, zero)

        yield from self._running(running)
        family = self._gauge(m.TASK_LAST_SENT)
        for name, at in sorted(last_sent.items()):
            family.add_metric([name, *static], at)
        yield family
        yield from self._periodic()
        yield from self._workers(workers, missing)
        yield from self._queues(workers)
        family = self._gauge(m.QUEUE_OLDEST_WAITING_AGE)
        for name, age in sorted(waiting.items()):
            family.add_metric([name, *static], age)
        yield family

        def one(metric: m.Metric, value: float) -> GaugeMetricFamily:
            family = self._gauge(metric)
            family.add_metric(list(static), value)
            return family

        def by(metric: m.Metric, values: dict, counter: bool = False) -> Metric:
            family = self._counter(metric) if counter else self._gauge(metric)
            for label, value in sorted(values.items()):
                family.add_metric([label, *static], value)
            return family

        info = self._gauge(m.BUILD_INFO)
        info.add_metric([__version__, platform.python_version(), celery.__version__,
                         kombu.__version__, *static], 1)
        yield info
        yield one(m.BROKER_CONNECTED, 1.0 if connected else 0.0)
        reconnect_family = self._counter(m.BROKER_RECONNECTS)
        reconnect_family.add_metric(list(static), reconnects)
        yield reconnect_family
        yield by(m.EVENTS, event_types, counter=True)
        yield by(m.EVENTS_INVALID, invalid, counter=True)
        yield by(m.EVENTS_DUPLICATE, duplicates, counter=True)
        if last_event:
            yield one(m.LAST_EVENT, last_event)
            yield one(m.EVENT_LAG, lag)
        yield one(m.TASKS_TRACKED, tracked)
        yield by(m.TASKS_EVICTED, evicted, counter=True)
        yield by(m.SERIES_DROPPED, self._full_names(dropped), counter=True)
        yield by(m.WAITS_CLAMPED, self._full_names(clamped), counter=True)
        yield by(m.CLOCK_OFFSET, offsets)
        yield one(m.WORKERS_TASK_EVENTS_MISSING, 1.0 if missing else 0.0)
        yield from self._probe_status()

    def _full_names(self, by_key: dict[str, int]) -> dict[str, int]:
        return {m.BY_KEY[key].full(self.prefix): value for key, value in by_key.items()}

    def _go(self, bound: float) -> str:
        text = self._le.get(bound)
        if text is None:
            text = self._le[bound] = floatToGoString(bound)
        return text

    def _waiting(self, state: State) -> dict[str, float]:
        """Oldest waiting ages; 0 where the latest queue probe found the queue empty, and
        what was published before that probe run is forgotten (its received event was
        lost). Called under the pipeline lock."""
        with self.probes.lock:
            lengths = self.probes.queues.length
            runs = [s.last_run for n, s in self.probes.status.items()
                    if n not in NOT_QUEUE_PROBES]
        stamp = state.stamp
        waiting = state.waiting
        if runs and max(runs):
            measured = stamp.mono - (stamp.wall - max(runs))  # the probe run, monotonic
            for name, length in lengths.items():
                if length == 0:
                    waiting.drained(name, measured)
        ages = waiting.snapshot(stamp.mono)
        for name in state.queues_seen:  # published to, nothing waiting now
            ages.setdefault(name, 0.0)
        for name, length in lengths.items():
            if length == 0:
                ages[name] = 0.0
        return ages

    def _periodic(self) -> Iterator[Metric]:
        with self.probes.lock:
            facts = self.probes.periodic  # replaced wholesale by each read, never mutated
        if facts is None:  # no schedule source: no families at all
            return
        static = self.static_values
        last = self._gauge(m.PERIODIC_LAST_RUN)
        due = self._gauge(m.PERIODIC_NEXT_RUN)
        overdue = self._gauge(m.PERIODIC_OVERDUE)
        for row in facts.rows:
            key = [row.entry, row.name, *static]
            if row.last_run is not None:
                last.add_metric(key, row.last_run)
            due.add_metric(key, row.next_run)
            overdue.add_metric(key, 1.0 if row.overdue else 0.0)
        skipped = self._gauge(m.PERIODIC_SKIPPED)
        for reason in SKIP_REASONS:  # every reason, 0 included: a panel shows "none"
            skipped.add_metric([reason, *static], facts.skipped.get(reason, 0))
        yield from (last, due, overdue, skipped)

    def _running(self, running: dict[tuple[str, str], tuple[int, float]]) -> Iterator[Metric]:
        static = self.static_values
        count = self._gauge(m.TASK_RUNNING)
        oldest = self._gauge(m.TASK_OLDEST_RUNNING_AGE)
        for key, (n, age) in sorted(running.items()):
            count.add_metric([*key, *static], n)
            oldest.add_metric([*key, *static], age)
        yield from (count, oldest)

    def _workers(self, workers: list[_WorkerRow], missing: bool) -> Iterator[Metric]:
        static = self.static_values
        up = self._gauge(m.WORKER_UP)
        active = self._gauge(m.WORKER_TASKS_ACTIVE)
        prefetched = self._gauge(m.WORKER_TASKS_PREFETCHED)
        scheduled = self._gauge(m.WORKER_TASKS_SCHEDULED)
        seen = self._gauge(m.WORKER_LAST_HEARTBEAT)
        info = self._gauge(m.WORKER_INFO)
        pool = self._gauge(m.WORKER_POOL_PROCESSES)
        limit = self._gauge(m.WORKER_PREFETCH_LIMIT)
        events_missing = self._gauge(m.WORKER_TASK_EVENTS_MISSING)
        clean = self._gauge(m.WORKER_CLEAN_SHUTDOWN)
        received = self._gauge(m.WORKER_LAST_RECEIVED)
        consumes = self._gauge(m.WORKER_QUEUE)
        # Worker gauges are per node: with grouped worker labels several nodes share a
        # label, so their values add up (and `up` counts live nodes).
        groups: dict[str, _WorkerGroup] = {}
        for w in workers:
            g = groups.get(w.label)
            if g is None:
                g = groups[w.label] = _WorkerGroup()
            g.nodes += 1
            g.up += 1.0 if w.up else 0.0
            g.active += (w.active or 0) if w.up else 0
            g.prefetched += max(w.prefetched, 0)
            g.scheduled += max(w.scheduled, 0)
            g.last_seen = max(g.last_seen, w.last_seen)
            g.pool += w.pool or 0
            g.limit += w.prefetch_limit or 0
            g.probed += w.pool is not None
            g.events_missing = g.events_missing or bool(w.events_missing and w.up)
            g.said_goodbye += bool(w.said_goodbye and not w.up)
            g.last_received = max(g.last_received, w.last_received)
            g.queues |= w.queues
            if w.sw_ver or w.sw_ident or w.sw_sys:
                info.add_metric([w.label, w.sw_ver, w.sw_ident, w.sw_sys, *static], 1)
        for label, g in sorted(groups.items()):
            key = [label, *static]
            up.add_metric(key, g.up)
            active.add_metric(key, g.active)
            prefetched.add_metric(key, g.prefetched)
            scheduled.add_metric(key, g.scheduled)
            seen.add_metric(key, g.last_seen)
            events_missing.add_metric(key, 1.0 if g.events_missing else 0.0)
            clean.add_metric(key, 1.0 if g.said_goodbye == g.nodes else 0.0)
            if g.last_received:
                received.add_metric(key, g.last_received)
            for queue in sorted(g.queues):
                consumes.add_metric([label, queue, *static], 1)
            if g.probed:
                pool.add_metric(key, g.pool)
                limit.add_metric(key, g.limit)
        yield from (up, active, prefetched, scheduled, seen, info, pool, limit, events_missing,
                    clean, received, consumes)

    def _queues(self, workers: list[_WorkerRow]) -> Iterator[Metric]:
        static = self.static_values
        with self.probes.lock:
            facts = self.probes.queues
            lengths, consumers = dict(facts.length), dict(facts.consumers)
            unacked, utilisation = dict(facts.unacked), dict(facts.utilisation)
        if not consumers and any(w.queues for w in workers):
            # Redis has no consumer count: count live workers that consume each queue.
            for name in lengths:
                consumers[name] = float(sum(1 for w in workers if w.up and name in w.queues))
        for metric, values in ((m.QUEUE_LENGTH, lengths), (m.QUEUE_CONSUMERS, consumers),
                               (m.QUEUE_MESSAGES_UNACKED, unacked),
                               (m.QUEUE_CONSUMER_UTILISATION, utilisation)):
            family = self._gauge(metric)
            for name, value in sorted(values.items()):
                family.add_metric([name, *static], value)
            yield family

    def _probe_status(self) -> Iterator[Metric]:
        static = self.static_values
        duration = self._gauge(m.PROBE_DURATION)
        success = self._gauge(m.PROBE_SUCCESS)
        errors = self._counter(m.PROBE_ERRORS)
        last_success = self._gauge(m.PROBE_LAST_SUCCESS)
        with self.probes.lock:
            rows = [(n, s.duration, s.success, s.errors, s.last_run, s.last_success)
                    for n, s in sorted(self.probes.status.items())]
        for name, dur, ok, errs, last_run, last_ok in rows:
            key = [name, *static]
            if last_run:
                duration.add_metric(key, dur)
                success.add_metric(key, 1.0 if ok else 0.0)
                last_success.add_metric(key, last_ok)
            errors.add_metric(key, errs)
        yield from (duration, success, errors, last_success)

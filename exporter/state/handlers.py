"""Pure aggregates from Celery events: no I/O, no clock reads, no threads.

`State.ingest(events, now, mono)` applies a batch of decoded events received at `now` (the
exporter's wall clock) and `mono` (its monotonic clock); `State.tick(now, mono)` ages
workers and in-flight tasks. Given the same events and times it always produces the same
numbers, which is how the tests drive it (they pass `now` alone: mono defaults to it).

Clocks: only event timestamps are compared with the wall clock (offsets, lag, `_created`);
every age (liveness, TTL, grace periods, offset windows) is measured on `mono`, so a wall
clock step does not mark workers down or expire tasks.

This is the one module that knows every event type; the rooms it drives (task table,
worker registry, clocks, held observations, series) know nothing of each other's events.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple

from celery_events_exporter import metrics as m
from celery_events_exporter.decode import REASONS
from celery_events_exporter.labels import UNKNOWN, Labeler, exception_class
from celery_events_exporter.state.clocks import Clocks
from celery_events_exporter.state.config import MAX_KEY, StateConfig
from celery_events_exporter.state.pending import Op, Pending
from celery_events_exporter.state.running import Running
from celery_events_exporter.state.series import Series, Stamp
from celery_events_exporter.state.tasks import (
    PREFETCHED,
    SCHEDULED,
    Task,
    TaskTable,
    parse_eta,
    queue_of,
    release,
)
from celery_events_exporter.state.waiting import Waiting
from celery_events_exporter.state.workers import Worker, Workers

_MAX_EVENT_TYPES = 64
EVENT_REASONS = ("not_an_object", "missing_type", "bad_timestamp", "bad_field",
                 "timestamp_out_of_range", "value_out_of_range")
TERMINAL = ("task-succeeded", "task-failed", "task-rejected", "task-revoked")
_BIT = {kind: 1 << i for i, kind in enumerate(TERMINAL)}
_ANY_END = sum(_BIT.values())
# Sender clocks may be off by hours; a timestamp further than this ahead of the receive
# time (or negative, or not finite) is garbage that would turn into 1e300-second waits.
# Clocks far behind (a host that booted in 1970) are left to the offsets, which correct
# them; the waits they could still produce are bounded by MAX_RUNTIME.
MAX_CLOCK_SKEW = 86_400.0
# No task runs or waits longer than a year: a value beyond would poison `_sum`.
MAX_RUNTIME = 366 * 86_400.0
# Celery's heartbeat interval is seconds; beyond an hour a worker would never time out.
MAX_HEARTBEAT_INTERVAL = 3600.0


class Reconciled(NamedTuple):
    """What the first full heartbeat after a broker gap (or an unseen restart) reset."""

    worker: str
    prefetched: int
    scheduled: int
    restarted: bool


_MAX_RECONCILED = 1000


class Seen:
    """One task event on its way to the series: which task, from which worker."""

    __slots__ = ("event", "task", "uuid", "worker")

    def __init__(self, uuid: str, task: Task, event: dict, worker: Worker) -> None:
        self.uuid = uuid
        self.task = task
        self.event = event
        self.worker = worker


class State:
    def __init__(self, config: StateConfig | None = None) -> None:
        self.config = cfg = config or StateConfig()
        self.labels = Labeler(cfg.labels)
        self.stamp = stamp = Stamp()
        self.table = TaskTable(cfg.max_tasks, stamp)
        self.registry = Workers(cfg, self.labels, stamp)
        self.clocks = Clocks(self.labels, cfg.max_series)
        self.pending = Pending(self.labels, cfg.max_tasks)
        # The read side (collector, checks, tests) reads these by their old names.
        self.tasks = self.table.tasks
        self.finished = self.table.finished
        self.evicted = self.table.evicted
        self.workers = self.registry.workers
        limit = cfg.max_series
        self.counters = {metric.key: Series(metric, limit, stamp)
                         for metric in m.TASK_COUNTERS}
        # Incident signals (issue 12): their own rooms, fed by the marked hooks below.
        interrupted = Series(m.TASK_INTERRUPTED, limit, stamp)
        self.counters[m.TASK_INTERRUPTED.key] = interrupted
        self.running = Running(self.labels, interrupted, cfg.max_tasks, self.table.tasks)
        self.registry.on_down = self.running.lost
        self.waiting = Waiting(cfg.max_tasks, limit, self.table.tasks, self.table.finished)
        self._fresh = self.waiting.fresh
        # Bound dict pops: no Python frame on the hot path.
        self._not_waiting = self.waiting.since.pop
        self._not_running = self.running.runs.pop
        self._runs = self.running.runs
        self.last_sent: dict[str, float] = {}  # task name label -> exporter wall clock
        self.histograms = {metric.key: Series(metric, limit, stamp, cfg.buckets_for(metric),
                                                  exemplars=True)
                           for metric in m.HISTOGRAMS}
        self.event_types: dict[str, int] = {}
        # Terminal events seen again for a task already counted (re-sent after a reconnect).
        self.duplicates: dict[str, int] = dict.fromkeys(("task-started", *TERMINAL), 0)
        self.invalid: Counter[str] = Counter(dict.fromkeys((*REASONS, *EVENT_REASONS), 0))
        self.clamped: dict[str, int] = {m.QUEUE_WAIT.key: 0, m.PREFETCH_WAIT.key: 0}
        self.queues_seen: dict[str, None] = {}
        self.last_event = 0.0
        self.lag = 0.0
        # Reconciliations not yet logged by the pipeline (which clears the list).
        self.reconciled: list[Reconciled] = []

        self._task = self.table.task
        self._worker = self.registry.get
        self._offset = self.clocks.observe
        c = self.counters
        self._sent, self._received = c[m.TASK_SENT.key], c[m.TASK_RECEIVED.key]
        self._started, self._succeeded = c[m.TASK_STARTED.key], c[m.TASK_SUCCEEDED.key]
        self._failed, self._retried = c[m.TASK_FAILED.key], c[m.TASK_RETRIED.key]
        self._rejected, self._revoked = c[m.TASK_REJECTED.key], c[m.TASK_REVOKED.key]
        h = self.histograms
        self._qwait, self._pwait = h[m.QUEUE_WAIT.key], h[m.PREFETCH_WAIT.key]
        self._runtime = h[m.RUNTIME.key]
        self._handlers = {
            "task-sent": self._on_sent,
            "task-received": self._on_received,
            "task-started": self._on_started,
            "task-succeeded": self._on_succeeded,
            "task-failed": self._on_failed,
            "task-retried": self._on_retried,
            "task-rejected": self._on_rejected,
            "task-revoked": self._on_revoked,
            "task-cancelled": self._on_cancelled,
            "worker-online": self._on_worker_online,
            "worker-heartbeat": self._on_heartbeat,
            "worker-offline": self._on_worker_offline,
        }

    # -- entry points -------------------------------------------------------------------

    def invalid_event(self, reason: str, count: int = 1) -> None:
        self.invalid[reason] += count

    def ingest(self, events: Iterable[object], now: float, mono: float | None = None) -> None:
        """Apply events received together at `now` (one broker message, possibly a batch)."""
        stamp = self.stamp
        stamp.wall = now
        stamp.mono = now if mono is None else mono
        handlers = self._handlers
        types = self.event_types
        ts = None
        latest = now + MAX_CLOCK_SKEW
        for event in events:
            if type(event) is not dict:
                self.invalid_event("not_an_object")
                continue
            kind = event.get("type")
            try:
                n = types.get(kind)  # type: ignore[arg-type]
            except TypeError:  # a list or object as the type: unhashable, hostile
                n = None
            if n is not None:
                types[kind] = n + 1  # type: ignore[index]
            elif type(kind) is not str:
                self.invalid_event("missing_type")
                continue
            elif len(types) >= _MAX_EVENT_TYPES or len(kind) > 64:
                # Only the counter's label is capped: the event itself is still handled.
                types["other"] = types.get("other", 0) + 1
            else:
                types[kind] = 1
            handler = handlers.get(kind)  # type: ignore[arg-type]
            if handler is None:
                continue
            ts = event.get("timestamp")
            if type(ts) is not float:
                if type(ts) is int:
                    ts = float(ts)
                else:
                    self.invalid_event("bad_timestamp")
                    ts = None
                    continue
            if not 0.0 <= ts <= latest:  # NaN fails too
                self.invalid_event("timestamp_out_of_range")
                ts = None
                continue
            try:
                handler(event, ts, now)
            except (TypeError, ValueError, AttributeError, KeyError, OverflowError):
                self.invalid_event("bad_field")
        self.last_event = now
        if ts is not None:
            self.lag = now - ts

    def broker_gap(self, mono: float) -> None:
        """Our broker connection came back at `mono` (monotonic) after a gap: events were
        lost, so each live worker's buffers are reconciled at its next full heartbeat."""
        for worker in self.workers.values():
            if worker.up:
                worker.gap_before = mono

    def tick(self, now: float, mono: float | None = None) -> None:
        """Age workers (timeout, retention) and in-flight tasks (TTL); roll clock offsets."""
        stamp = self.stamp
        stamp.wall = now
        stamp.mono = mono = now if mono is None else mono
        self.registry.age(mono, self.counters.values())
        self.table.expire(mono, self.config.task_ttl)
        self.pending.due(mono)
        self.waiting.flush()  # incidents
        self.running.trim()  # incidents
        self.clocks.roll(mono)

    # -- helpers --------------------------------------------------------------------------

    def _known(self, uuid: object) -> Task:
        """The task for an event about a task that may have left the table: tracked,
        recently finished or evicted (its labels remembered), or unknown."""
        task = self.tasks.get(uuid)  # type: ignore[arg-type]
        if task is not None:
            return task
        held = self.pending.held.get(uuid)  # type: ignore[arg-type]
        if held is not None:
            return held.task
        task = Task()
        remembered = self.finished.get(uuid)  # type: ignore[arg-type]
        if remembered is not None:
            task.name, task.queue = remembered.name, remembered.queue
        return task

    def _terminal(self, uuid: object, kind: str) -> Task | None:
        """The task a terminal event ends, or None if its end was counted already."""
        self._not_running(uuid, None)  # incidents
        task = self.tasks.get(uuid)  # type: ignore[arg-type]
        if task is not None:
            return task
        if uuid not in self.pending.held and self.table.ended(uuid, _BIT[kind]):
            self.duplicates[kind] += 1
            return None
        return self._known(uuid)

    def _capture_name(self, task: Task, event: dict) -> None:
        if task.name is None:
            raw = event.get("name")
            if type(raw) is str:
                task.name = raw[:MAX_KEY]  # the string itself when it fits

    def _names(self, task: Task, event: dict, worker: Worker | None) -> tuple[str, str] | None:
        self._capture_name(task, event)
        name = task.name
        label = self.labels.task(name) if name is not None else UNKNOWN
        if label is None:
            return None
        return label, queue_of(task, worker)

    def _emit(self, at: Seen, series: Series, tail: tuple[str, ...] = (),
              value: float | None = None) -> None:
        """Count (value None) or observe under the task's labels, or hold the update until
        task-sent names the queue (see `pending`)."""
        task = at.task
        if task.queue is None and \
                self.pending.wants(at.uuid, task, at.worker, self.stamp.mono):
            self._capture_name(task, at.event)
            self.pending.hold(at.uuid, task, Op(series, tail, value), self.stamp.mono)
            return
        names = self._names(task, at.event, at.worker)
        if names is None:
            return
        if value is None:
            series.inc((*names, *tail))
        else:
            series.observe(names, value, at.uuid)

    def _observe_wait(self, names: tuple[str, str] | None, started: float, sent: float,
                      uuid: str) -> None:
        if names is None:
            return
        wait = started - sent
        if wait < 0:
            self.clamped[m.QUEUE_WAIT.key] += 1
            wait = 0.0
        self._qwait.observe(names, wait, uuid)

    def _observe_runtime(self, at: Seen, runtime: object) -> None:
        if type(runtime) is int:
            runtime = float(runtime)
        elif type(runtime) is not float:
            raise TypeError  # counted as a bad field
        if not 0.0 <= runtime <= MAX_RUNTIME:  # NaN fails too
            self.invalid_event("value_out_of_range")
            return
        self._emit(at, self._runtime, value=runtime)

    def _new_attempt(self, task: Task, retries: object) -> None:
        if type(retries) is int and retries > task.retries:
            task.retries = retries
            release(task)
            task.received = task.started = task.started_at = None
            task.sent = None  # eta is read only with `received`, which task-received sets

    # -- task events ---------------------------------------------------------------------

    def _on_sent(self, e: dict, ts: float, now: float) -> None:
        self.pending.sent_seen = self.stamp.mono
        uuid = e["uuid"]
        held = self.pending.held.get(uuid)
        if uuid in self.tasks or (held is None and uuid not in self.finished):
            task = self._task(uuid)
        elif held is not None:
            # Finished before its task-sent arrived: label it, but do not track it again.
            task = held.task
        else:
            # Producers publish task-sent after the task message, so a busy producer's
            # event can arrive after the worker's whole lifecycle: count it, but do not
            # put the finished task back in the in-flight table until the TTL.
            self._late_sent(e)
            return
        self._new_attempt(task, e.get("retries"))
        # The name: `_names` below takes it from this event unless an earlier one had it.
        queue = e.get("queue") or e.get("routing_key")
        if type(queue) is str:
            task.queue = queue = self.labels.queue(queue)
            if queue not in self.queues_seen and len(self.queues_seen) < 10_000:
                self.queues_seen[queue] = None
        offset = self._offset(e.get("hostname") or "", ts, now)
        eta = parse_eta(e.get("eta"))
        start = ts if eta is None else max(ts, eta)
        task.sent = start + offset
        names = self._names(task, e, None)
        if names is not None:
            self._sent.inc(names)
            last_sent = self.last_sent  # incidents: a dead-man's switch per name
            if names[0] in last_sent or len(last_sent) < self.config.max_series:
                last_sent[names[0]] = now
        # incidents: looked at on the next tick (`Waiting.flush` skips what was received).
        self._fresh[uuid] = self.stamp.mono - (now - task.sent)
        if task.started_at is not None:
            # The worker started it before this event arrived: the wait is known now.
            self._observe_wait(names, task.started_at, task.sent, uuid)
            task.started_at = None
        if held is not None:
            self.pending.resolve(uuid)

    def _late_sent(self, e: dict) -> None:
        task = Task()
        remembered = self.finished[e["uuid"]]
        task.name, task.queue = remembered.name, remembered.queue
        queue = e.get("queue") or e.get("routing_key")
        if type(queue) is str:
            task.queue = self.labels.queue(queue)
        names = self._names(task, e, None)
        if names is not None:
            self._sent.inc(names)

    def _on_received(self, e: dict, ts: float, now: float) -> None:
        uuid = e["uuid"]
        task = self._task(uuid)
        worker = self._worker(e["hostname"], now)
        worker.task_events = True
        worker.last_received = now  # incidents
        self._not_waiting(uuid, None)  # incidents
        self._new_attempt(task, e.get("retries"))
        release(task)
        task.received = ts
        task.worker = worker
        task.wgen = worker.gen
        task.eta = bool(e.get("eta"))
        if task.eta:
            task.buf = SCHEDULED
            worker.scheduled += 1
        else:
            task.buf = PREFETCHED
            worker.prefetched += 1
        self._emit(Seen(uuid, task, e, worker), self._received, (worker.label,))

    def _on_started(self, e: dict, ts: float, now: float) -> None:
        uuid = e["uuid"]
        if uuid not in self.tasks and self.table.ended(uuid, _ANY_END):
            # A finished task starts again only after a new task-received (a redelivery),
            # which would have put it back in the table: this is a re-sent event.
            self._worker(e["hostname"], now).task_events = True
            self.duplicates["task-started"] += 1
            return
        task = self._task(uuid)
        worker = self._worker(e["hostname"], now)
        worker.task_events = True
        release(task)
        task.started = ts
        task.worker = worker
        task.wgen = worker.gen
        at = Seen(uuid, task, e, worker)
        self._emit(at, self._started, (worker.label,))
        started = ts + self._offset(worker.hostname, ts, now)
        # incidents: running since (monotonic), one dict store; a start stamped ahead of
        # our clock reads as age 0 (snapshot clamps), the cap is enforced on the tick.
        self._runs[uuid] = self.stamp.mono - now + started
        if task.sent is not None:
            self._emit_wait(at, self._qwait, started - task.sent)
        else:
            task.started_at = started
        if task.received is not None and not task.eta:
            self._emit_wait(at, self._pwait, ts - task.received)

    def _emit_wait(self, at: Seen, series: Series, wait: float) -> None:
        """A wait ending at this task-started: below 0 (clocks) clamped and counted, beyond
        sane bounds counted invalid instead of observed."""
        if wait < 0:
            self.clamped[series.metric.key] += 1
            wait = 0.0
        if wait <= MAX_RUNTIME:
            self._emit(at, series, value=wait)
        else:
            self.invalid_event("value_out_of_range")

    def _on_succeeded(self, e: dict, ts: float, now: float) -> None:
        uuid = e["uuid"]
        task = self._terminal(uuid, "task-succeeded")
        worker = self._worker(e["hostname"], now)
        worker.task_events = True
        if task is None:
            return
        self.table.finish(uuid, task, _BIT["task-succeeded"])
        at = Seen(uuid, task, e, worker)
        self._emit(at, self._succeeded, (worker.label,))
        runtime = e.get("runtime")
        if runtime is None and task.started is not None:
            runtime = ts - task.started
        if type(runtime) is float and 0.0 <= runtime <= MAX_RUNTIME:  # the usual case
            self._emit(at, self._runtime, value=runtime)
        elif runtime is not None:
            self._observe_runtime(at, runtime)

    def _on_failed(self, e: dict, ts: float, now: float) -> None:
        uuid = e["uuid"]
        task = self._terminal(uuid, "task-failed")
        worker = self._worker(e["hostname"], now)
        worker.task_events = True
        if task is None:
            return
        self.table.finish(uuid, task, _BIT["task-failed"])
        exc = self.labels.cap(exception_class(e.get("exception")))
        at = Seen(uuid, task, e, worker)
        self._emit(at, self._failed, (worker.label, exc))
        if task.started is not None:
            self._observe_runtime(at, ts - task.started)

    def _on_retried(self, e: dict, ts: float, now: float) -> None:
        uuid = e["uuid"]
        # With a zero countdown the next attempt can finish before this event is sent: then
        # count it under the remembered name rather than resurrect the finished task.
        task = self._task(uuid) if uuid in self.tasks else self._known(uuid)
        worker = self._worker(e["hostname"], now)
        worker.task_events = True
        current = task.worker
        if current is None or (current is worker and \
                not (task.received is not None and ts < task.received) and \
                not (task.started is not None and ts < task.started)):
            # It ends the attempt in the table. Otherwise the next attempt already began
            # (on another worker, or later on this one) and is none of this event's business.
            release(task)
            task.started = None
        self._emit(Seen(uuid, task, e, worker), self._retried, (worker.label,))

    def _on_rejected(self, e: dict, ts: float, now: float) -> None:
        uuid = e["uuid"]
        requeue = e.get("requeue") and uuid in self.tasks
        task = self._known(uuid) if requeue else self._terminal(uuid, "task-rejected")
        worker = self._worker(e["hostname"], now)
        worker.task_events = True
        if task is None:
            return
        if requeue:
            release(task)
            task.received = task.started = None
        else:
            self.table.finish(uuid, task, _BIT["task-rejected"])
        self._emit(Seen(uuid, task, e, worker), self._rejected, (worker.label,))

    def _on_revoked(self, e: dict, ts: float, now: float) -> None:
        uuid = e["uuid"]
        task = self._terminal(uuid, "task-revoked")
        worker = self._worker(e["hostname"], now)
        worker.task_events = True
        if task is None:
            return
        self.table.finish(uuid, task, _BIT["task-revoked"])
        if e.get("expired"):
            reason = "expired"
        elif e.get("terminated"):
            reason = "terminated"
        else:
            reason = "revoked"
        self._emit(Seen(uuid, task, e, worker), self._revoked, (worker.label, reason))

    def _on_cancelled(self, e: dict, ts: float, now: float) -> None:
        task = self.tasks.get(e["uuid"])
        worker = self._worker(e["hostname"], now)
        worker.task_events = True
        if task is not None:
            release(task)
            task.started = None

    # -- worker events --------------------------------------------------------------------

    def _update_worker(self, worker: Worker, e: dict, ts: float, now: float) -> None:
        # Seen just now: `Workers.get` stamped it.
        freq = e.get("freq")
        if type(freq) in (int, float):
            if 0 < freq <= MAX_HEARTBEAT_INTERVAL:  # NaN fails too
                worker.freq = float(freq)
            else:
                self.invalid_event("value_out_of_range")
        for attr in ("sw_ident", "sw_ver", "sw_sys"):
            value = e.get(attr)
            if type(value) is str and value:
                setattr(worker, attr, self.labels.cap(value))
        self._offset(worker.hostname, ts, now)

    def _on_worker_online(self, e: dict, ts: float, now: float) -> None:
        worker = self._worker(e["hostname"], now)
        self.running.lost(worker)  # incidents: a restart ends what it was running
        worker.last_received = now  # incidents: a new consumer, nothing received yet
        # A restarted node starts with empty buffers and a fresh 'processed' count.
        worker.drop_buffers()
        worker.gap_before = None
        worker.active = None
        worker.last_processed = None
        worker.silent_beats = 0
        worker.events_missing = False
        self._update_worker(worker, e, ts, now)

    def _on_heartbeat(self, e: dict, ts: float, now: float) -> None:
        worker = self._worker(e["hostname"], now)
        self._update_worker(worker, e, ts, now)
        if not worker.last_received:  # incidents: first heard of, nothing received yet
            worker.last_received = now
        active = e.get("active")
        if type(active) is int:
            worker.active = active
        processed = e.get("processed")
        # The wake-up heartbeat carries no active/processed: it says nothing about load.
        if type(processed) is int:
            last = worker.last_processed
            if last is not None and processed < last:
                # Restarted without a worker-online reaching us: its buffers went back to
                # the broker with the old process.
                self._reconciled(worker, worker.prefetched, worker.scheduled, True)
                worker.drop_buffers()
                worker.gap_before = None
            elif worker.gap_before is not None:
                reset = self.table.reset_prefetched(worker, worker.gap_before)
                worker.gap_before = None
                self._reconciled(worker, reset, 0, False)
            if last is not None and processed > last and not worker.task_events:
                worker.silent_beats += 1
            elif worker.task_events:
                worker.silent_beats = 0
            worker.events_missing = worker.silent_beats >= 2
            worker.last_processed = processed
            worker.task_events = False

    def _reconciled(self, worker: Worker, prefetched: int, scheduled: int,
                    restarted: bool) -> None:
        if len(self.reconciled) < _MAX_RECONCILED:
            self.reconciled.append(Reconciled(worker.hostname, prefetched, scheduled, restarted))

    def _on_worker_offline(self, e: dict, ts: float, now: float) -> None:
        worker = self._worker(e["hostname"], now)
        self._update_worker(worker, e, ts, now)
        self.registry.down(worker)
        worker.said_goodbye = True

    # -- read side ------------------------------------------------------------------------

    @property
    def workers_dropped(self) -> int:
        return self.registry.dropped

    @property
    def series_dropped(self) -> dict[str, int]:
        out = {series.metric.key: series.dropped
               for series in (*self.counters.values(), *self.histograms.values())}
        out[m.WORKER_UP.key] = self.registry.dropped
        return out

    @property
    def task_events_missing(self) -> bool:
        return any(w.up and w.events_missing for w in self.workers.values())

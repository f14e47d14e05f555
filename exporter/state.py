"""Pure aggregates from Celery events: no I/O, no clock reads, no threads.

`State.ingest(events, now)` applies a batch of decoded events received at `now` (the
exporter's clock); `State.tick(now)` ages workers and in-flight tasks. Given the same
events and times it always produces the same numbers, which is how the tests drive it.

Times: every event carries `timestamp` on its sender's clock. Waits that cross hosts
(published on a producer, started on a worker) are corrected with a per-host offset
estimated as min(receive time - sender timestamp) over a rolling window; waits measured
on one worker (prefetch wait, runtime) use that worker's clock alone.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from celery_events_exporter import metrics as m
from celery_events_exporter.decode import REASONS
from celery_events_exporter.labels import UNKNOWN, Labeler, LabelPolicy, exception_class

# Where a task sits in a worker's buffer (received, not started).
_NONE, _PREFETCHED, _SCHEDULED = 0, 1, 2

OFFSET_WINDOW_SECONDS = 300.0
_MAX_EVENT_TYPES = 64
# Task ids, node names and task names longer than this are hostile (a uuid is 36 chars, a
# node name `prefix@fqdn` fits in 320): never kept whole, so they cannot pin memory.
_MAX_KEY = 320
_MAX_OFFSET_HOSTS = 10_000
_FINISHED_CAP = 10_000
EVENT_REASONS = ("not_an_object", "missing_type", "bad_timestamp", "bad_field")
# How long worker-side observations wait for a late task-sent, and how long after the last
# task-sent we keep expecting them (producers without task_send_sent_event send none).
PENDING_GRACE = 5.0
SENT_MEMORY = 300.0


@dataclass(frozen=True)
class StateConfig:
    max_tasks: int = 100_000
    task_ttl: float = 3600.0
    worker_timeout: float = 0.0  # 0: Celery's rule, twice the worker's heartbeat interval
    worker_down_retention: float = 600.0
    max_series: int = 10_000
    labels: LabelPolicy = field(default_factory=LabelPolicy)
    buckets: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def buckets_for(self, metric: m.Metric) -> tuple[float, ...]:
        return self.buckets.get(metric.key) or metric.buckets or ()


class Task:
    __slots__ = ("buf", "eta", "name", "pending", "queue", "received", "retries", "sent",
                 "started", "started_at", "touched", "wgen", "worker")

    def __init__(self) -> None:
        self.name: str | None = None
        self.queue: str | None = None
        self.sent: float | None = None  # max(sent, eta), on the exporter's clock
        self.received: float | None = None  # worker clock
        self.started: float | None = None  # worker clock
        self.eta = False
        self.retries = 0
        self.worker: Worker | None = None
        self.wgen = 0
        self.buf = _NONE
        self.touched = 0.0
        # Observations held until task-sent names the queue, and the start time (exporter
        # clock) kept for a task-sent that arrives after task-started.
        self.pending: list | None = None
        self.started_at: float | None = None


class Worker:
    __slots__ = ("active", "down_since", "events_missing", "freq", "gen", "hostname", "label",
                 "last_processed", "last_seen", "pool", "prefetch_limit", "prefetched",
                 "queues", "said_goodbye", "scheduled", "silent_beats", "sw_ident", "sw_sys",
                 "sw_ver", "task_events", "up")

    def __init__(self, hostname: str, label: str) -> None:
        self.hostname = hostname
        self.label = label
        self.up = True
        # Down after worker-offline (a deploy, a scale-in) rather than silence (a crash).
        self.said_goodbye = False
        self.last_seen = 0.0
        self.down_since = 0.0
        self.freq = 2.0
        self.active: int | None = None
        self.prefetched = 0
        self.scheduled = 0
        self.gen = 0
        self.sw_ident = self.sw_ver = self.sw_sys = ""
        self.pool: int | None = None
        self.prefetch_limit: int | None = None
        self.queues: frozenset[str] = frozenset()
        self.task_events = 0
        self.last_processed: int | None = None
        self.silent_beats = 0
        self.events_missing = False

    def drop_buffers(self) -> None:
        """Buffered messages go back to the broker when a worker goes away."""
        self.gen += 1
        self.prefetched = self.scheduled = 0


class Series:
    """Counters and histograms for one metric: label tuple -> value, capped in size."""

    __slots__ = ("bounds", "data", "dropped", "limit", "metric")

    def __init__(self, metric: m.Metric, limit: int, bounds: tuple[float, ...] = ()) -> None:
        self.metric = metric
        self.limit = limit
        self.bounds = bounds
        self.data: dict[tuple[str, ...], list[float]] = {}
        self.dropped = 0

    def inc(self, key: tuple[str, ...]) -> None:
        cell = self.data.get(key)
        if cell is None:
            if len(self.data) >= self.limit:
                self.dropped += 1
                return
            cell = self.data[key] = [0.0]
        cell[0] += 1

    def observe(self, key: tuple[str, ...], value: float) -> None:
        # Cells hold per-bucket counts (non-cumulative, +Inf last) followed by the sum.
        cell = self.data.get(key)
        if cell is None:
            if len(self.data) >= self.limit:
                self.dropped += 1
                return
            cell = self.data[key] = [0.0] * (len(self.bounds) + 2)
        cell[bisect_left(self.bounds, value)] += 1
        cell[-1] += value

    def forget_worker(self, label: str, position: int) -> None:
        for key in [k for k in self.data if k[position] == label]:
            del self.data[key]


def parse_eta(value: object) -> float | None:
    """Celery sends ETA as an ISO 8601 string; naive values are UTC (enable_utc default)."""
    if not value or not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


class State:
    def __init__(self, config: StateConfig | None = None) -> None:
        self.config = cfg = config or StateConfig()
        self.labels = Labeler(cfg.labels)
        self.tasks: OrderedDict[str, Task] = OrderedDict()
        self.finished: OrderedDict[str, tuple[str | None, str | None]] = OrderedDict()
        self.workers: dict[str, Worker] = {}
        limit = cfg.max_series
        self.counters = {metric.key: Series(metric, limit) for metric in m.TASK_COUNTERS}
        self.histograms = {metric.key: Series(metric, limit, cfg.buckets_for(metric))
                           for metric in m.HISTOGRAMS}
        self.event_types: dict[str, int] = {}
        self.invalid: dict[str, int] = dict.fromkeys((*REASONS, *EVENT_REASONS), 0)
        self.evicted: dict[str, int] = {"capacity": 0, "ttl": 0}
        self.clamped: dict[str, int] = {m.QUEUE_WAIT.key: 0, m.PREFETCH_WAIT.key: 0}
        self.queues_seen: dict[str, None] = {}
        self.last_event = 0.0
        self.lag = 0.0
        self.task_events_total = 0
        # host -> min(receive - timestamp): current window and the one before it.
        self._offsets: dict[str, float] = {}
        self._offsets_prev: dict[str, float] = {}
        self._offsets_rolled = 0.0
        self._hosts: dict[str, str] = {}
        self.workers_dropped = 0
        self._pending: OrderedDict[str, tuple[Task, float]] = OrderedDict()
        # Until a tick says otherwise, assume producers send task-sent (the usual setup).
        self._sent_seen = math.inf

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
        self.invalid[reason] = self.invalid.get(reason, 0) + count

    def ingest(self, events: Iterable[object], now: float) -> None:
        """Apply events received together at `now` (one broker message, possibly a batch)."""
        handlers = self._handlers
        types = self.event_types
        ts = None
        for event in events:
            if type(event) is not dict:
                self.invalid_event("not_an_object")
                continue
            kind = event.get("type")
            try:
                n = types.get(kind)  # type: ignore[arg-type]
            except TypeError:  # a list or object as the type: unhashable, hostile
                n = None
            if n is None:
                if type(kind) is not str:
                    self.invalid_event("missing_type")
                    continue
                n = 0
                if len(types) >= _MAX_EVENT_TYPES or len(kind) > 64:
                    kind = "other"
                    n = types.get(kind, 0)
            types[kind] = n + 1  # type: ignore[index]
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
            try:
                handler(event, ts, now)
            except (TypeError, ValueError, AttributeError, KeyError, OverflowError):
                self.invalid_event("bad_field")
        self.last_event = now
        if ts is not None:
            self.lag = now - ts

    def tick(self, now: float) -> None:
        """Age workers (timeout, retention) and in-flight tasks (TTL); roll clock offsets."""
        cfg = self.config
        for worker in list(self.workers.values()):
            if worker.up:
                timeout = cfg.worker_timeout or worker.freq * 2.0
                if now > worker.last_seen + timeout:
                    self._worker_down(worker, now)
            elif now >= worker.down_since + cfg.worker_down_retention:
                self._remove_worker(worker)
        horizon = now - cfg.task_ttl
        tasks = self.tasks
        # Tasks move to the end on every event, so the stalest sit at the front.
        while tasks:
            task = tasks[next(iter(tasks))]
            if task.touched > horizon:
                break
            tasks.popitem(last=False)
            self._release(task)
            self.evicted["ttl"] += 1
        if self._sent_seen == math.inf:
            self._sent_seen = now
        pending = self._pending
        while pending:
            uuid = next(iter(pending))
            if pending[uuid][1] > now:
                break
            self._resolve(uuid)
        if now - self._offsets_rolled >= OFFSET_WINDOW_SECONDS:
            self._offsets_prev, self._offsets = self._offsets, {}
            self._offsets_rolled = now

    # -- helpers --------------------------------------------------------------------------

    def _task(self, uuid: str, now: float) -> Task:
        tasks = self.tasks
        task = tasks.get(uuid)
        if task is None:
            if type(uuid) is not str:
                raise TypeError("uuid")
            if len(uuid) > _MAX_KEY:
                raise ValueError("uuid too long")
            task = tasks[uuid] = Task()
            if len(tasks) > self.config.max_tasks:
                self._release(tasks.popitem(last=False)[1])
                self.evicted["capacity"] += 1
        else:
            tasks.move_to_end(uuid)
        task.touched = now
        return task

    def _finish(self, uuid: str, task: Task, remember: bool) -> None:
        self.tasks.pop(uuid, None)
        self._release(task)
        if remember and (type(uuid) is not str or len(uuid) <= _MAX_KEY):
            finished = self.finished
            finished[uuid] = (task.name, task.queue)
            if len(finished) > _FINISHED_CAP:
                finished.popitem(last=False)

    def _known(self, uuid: object) -> Task:
        """The task for a terminal event: tracked, recently finished, or unknown."""
        task = self.tasks.get(uuid)  # type: ignore[arg-type]
        if task is not None:
            return task
        held = self._pending.get(uuid)  # type: ignore[arg-type]
        if held is not None:
            return held[0]
        task = Task()
        remembered = self.finished.get(uuid)  # type: ignore[arg-type]
        if remembered is not None:
            task.name, task.queue = remembered
        return task

    def _release(self, task: Task) -> None:
        buf = task.buf
        if buf:
            worker = task.worker
            if worker is not None and worker.gen == task.wgen:
                if buf == _PREFETCHED:
                    worker.prefetched -= 1
                else:
                    worker.scheduled -= 1
            task.buf = _NONE

    def _host(self, hostname: str) -> str:
        host = self._hosts.get(hostname)
        if host is None:
            if len(self._hosts) >= 50_000:
                self._hosts.clear()
            host = hostname.partition("@")[2] or hostname
            if len(hostname) > _MAX_KEY:
                return host[:_MAX_KEY]  # hostile length: neither cached nor kept whole
            self._hosts[hostname] = host
        return host

    def _observe_offset(self, hostname: str, ts: float, now: float) -> float:
        host = self._host(hostname)
        delta = now - ts
        cur = self._offsets.get(host)
        if cur is None:
            cur = delta
            if len(self._offsets) < _MAX_OFFSET_HOSTS:
                self._offsets[host] = delta
        elif delta < cur:
            self._offsets[host] = cur = delta
        prev = self._offsets_prev.get(host)
        return cur if prev is None or cur < prev else prev

    def _worker(self, hostname: object, now: float) -> Worker:
        worker = self.workers.get(hostname)  # type: ignore[arg-type]
        if worker is None:
            if type(hostname) is not str:
                raise TypeError("hostname")
            if len(hostname) > _MAX_KEY:
                raise ValueError("hostname too long")
            if len(self.workers) >= self.config.max_series:
                # Runaway or hostile node names: count the event, do not track the node.
                self.workers_dropped += 1
                return Worker(hostname, self.labels.worker(hostname))
            worker = self.workers[hostname] = Worker(hostname, self.labels.worker(hostname))
        elif not worker.up:
            # Any event proves the node is back; its buffers were dropped when it went down.
            worker.up = True
            worker.said_goodbye = False
        worker.last_seen = now
        return worker

    def _queue_of(self, task: Task, worker: Worker | None) -> str:
        if task.queue is not None:
            return task.queue
        if worker is not None and len(worker.queues) == 1:
            return next(iter(worker.queues))
        return UNKNOWN

    def _capture_name(self, task: Task, event: dict) -> None:
        if task.name is None:
            raw = event.get("name")
            if type(raw) is str:
                task.name = raw if len(raw) <= _MAX_KEY else raw[:_MAX_KEY]

    def _names(self, task: Task, event: dict, worker: Worker | None) -> tuple[str, str] | None:
        self._capture_name(task, event)
        name = task.name
        label = self.labels.task(name) if name is not None else UNKNOWN
        if label is None:
            return None
        return label, self._queue_of(task, worker)

    def _emit(self, uuid: str, task: Task, e: dict, worker: Worker, series: Series,
              tail: tuple[str, ...], value: float | None, now: float) -> None:
        """Count (value None) or observe under the task's labels, or hold the observation
        until the task's own task-sent names its queue.

        A producer publishes task-sent after the message itself, so under load a worker's
        events often arrive first; labelling them at once would say `queue="unknown"` for
        tasks whose queue is about to be known. Held observations are replayed when
        task-sent arrives, or after PENDING_GRACE with the best label there is then.
        """
        if task.queue is None and len(worker.queues) != 1 and \
                not now - self._sent_seen >= SENT_MEMORY and \
                (type(uuid) is not str or len(uuid) <= _MAX_KEY):  # hostile ids: not held
            self._capture_name(task, e)
            if task.pending is None:
                task.pending = []
                pending = self._pending
                pending[uuid] = (task, now + PENDING_GRACE)
                if len(pending) > self.config.max_tasks:
                    self._resolve(next(iter(pending)))
            task.pending.append((series, tail, value))
            return
        names = self._names(task, e, worker)
        if names is None:
            return
        if value is None:
            series.inc((*names, *tail))
        else:
            series.observe(names, value)

    def _resolve(self, uuid: str) -> None:
        held = self._pending.pop(uuid, None)
        if held is None:
            return
        task = held[0]
        ops, task.pending = task.pending or [], None
        name = self.labels.task(task.name) if task.name is not None else UNKNOWN
        if name is None:
            return
        names = (name, self._queue_of(task, task.worker))
        for series, tail, value in ops:
            if value is None:
                series.inc((*names, *tail))
            else:
                series.observe(names, value)

    def _observe_wait(self, names: tuple[str, str] | None, started: float, sent: float) -> None:
        if names is None:
            return
        wait = started - sent
        if wait < 0:
            self.clamped[m.QUEUE_WAIT.key] += 1
            wait = 0.0
        self._qwait.observe(names, wait)

    def _new_attempt(self, task: Task, retries: object) -> None:
        if type(retries) is int and retries > task.retries:
            task.retries = retries
            self._release(task)
            task.received = task.started = task.started_at = None
            task.sent = None
            task.eta = False

    # -- task events ---------------------------------------------------------------------

    def _on_sent(self, e: dict, ts: float, now: float) -> None:
        self._sent_seen = now
        uuid = e["uuid"]
        held = self._pending.get(uuid)
        if uuid in self.tasks or (held is None and uuid not in self.finished):
            task = self._task(uuid, now)
        elif held is not None:
            # Finished before its task-sent arrived: label it, but do not track it again.
            task = held[0]
        else:
            # Producers publish task-sent after the task message, so a busy producer's
            # event can arrive after the worker's whole lifecycle: count it, but do not
            # put the finished task back in the in-flight table until the TTL.
            self._late_sent(e)
            return
        self._new_attempt(task, e.get("retries"))
        name = e.get("name")
        if type(name) is str:
            task.name = name if len(name) <= _MAX_KEY else name[:_MAX_KEY]
        queue = e.get("queue") or e.get("routing_key")
        if type(queue) is str:
            task.queue = queue = self.labels.queue(queue)
            if queue not in self.queues_seen and len(self.queues_seen) < 10_000:
                self.queues_seen[queue] = None
        offset = self._observe_offset(e.get("hostname") or "", ts, now)
        eta = parse_eta(e.get("eta")) if e.get("eta") else None
        start = ts if eta is None or eta < ts else eta
        task.sent = start + offset
        names = self._names(task, e, None)
        if names is not None:
            self._sent.inc(names)
        if task.started_at is not None:
            # The worker started it before this event arrived: the wait is known now.
            self._observe_wait(names, task.started_at, task.sent)
            task.started_at = None
        if held is not None:
            self._resolve(uuid)

    def _late_sent(self, e: dict) -> None:
        task = Task()
        task.name, task.queue = self.finished[e["uuid"]]
        queue = e.get("queue") or e.get("routing_key")
        if type(queue) is str:
            task.queue = self.labels.queue(queue)
        names = self._names(task, e, None)
        if names is not None:
            self._sent.inc(names)

    def _on_received(self, e: dict, ts: float, now: float) -> None:
        uuid = e["uuid"]
        task = self._task(uuid, now)
        worker = self._worker(e["hostname"], now)
        worker.task_events += 1
        self._new_attempt(task, e.get("retries"))
        self._release(task)
        task.received = ts
        task.worker = worker
        task.wgen = worker.gen
        task.eta = bool(e.get("eta"))
        if task.eta:
            task.buf = _SCHEDULED
            worker.scheduled += 1
        else:
            task.buf = _PREFETCHED
            worker.prefetched += 1
        self._emit(uuid, task, e, worker, self._received, (worker.label,), None, now)

    def _on_started(self, e: dict, ts: float, now: float) -> None:
        uuid = e["uuid"]
        task = self._task(uuid, now)
        worker = self._worker(e["hostname"], now)
        worker.task_events += 1
        self._release(task)
        task.started = ts
        task.worker = worker
        self._emit(uuid, task, e, worker, self._started, (worker.label,), None, now)
        started = ts + self._observe_offset(worker.hostname, ts, now)
        if task.sent is not None:
            wait = started - task.sent
            if wait < 0:
                self.clamped[m.QUEUE_WAIT.key] += 1
                wait = 0.0
            self._emit(uuid, task, e, worker, self._qwait, (), wait, now)
        else:
            task.started_at = started
        if task.received is not None and not task.eta:
            wait = ts - task.received
            if wait < 0:
                self.clamped[m.PREFETCH_WAIT.key] += 1
                wait = 0.0
            self._emit(uuid, task, e, worker, self._pwait, (), wait, now)

    def _on_succeeded(self, e: dict, ts: float, now: float) -> None:
        uuid = e["uuid"]
        task = self._known(uuid)
        worker = self._worker(e["hostname"], now)
        worker.task_events += 1
        self._finish(uuid, task, True)
        self._emit(uuid, task, e, worker, self._succeeded, (worker.label,), None, now)
        runtime = e.get("runtime")
        if runtime is None and task.started is not None:
            runtime = ts - task.started
        if runtime is not None and runtime >= 0 and not math.isinf(runtime):
            self._emit(uuid, task, e, worker, self._runtime, (), float(runtime), now)

    def _on_failed(self, e: dict, ts: float, now: float) -> None:
        uuid = e["uuid"]
        task = self._known(uuid)
        worker = self._worker(e["hostname"], now)
        worker.task_events += 1
        self._finish(uuid, task, True)
        exc = self.labels.cap(exception_class(e.get("exception")))
        self._emit(uuid, task, e, worker, self._failed, (worker.label, exc), None, now)
        if task.started is not None and ts >= task.started:
            self._emit(uuid, task, e, worker, self._runtime, (), ts - task.started, now)

    def _on_retried(self, e: dict, ts: float, now: float) -> None:
        uuid = e["uuid"]
        # With a zero countdown the next attempt can finish before this event is sent: then
        # count it under the remembered name rather than resurrect the finished task.
        task = self._task(uuid, now) if uuid in self.tasks else self._known(uuid)
        worker = self._worker(e["hostname"], now)
        worker.task_events += 1
        self._release(task)
        # The next attempt's task-sent may already have arrived and reset the attempt.
        task.started = None
        self._emit(uuid, task, e, worker, self._retried, (worker.label,), None, now)

    def _on_rejected(self, e: dict, ts: float, now: float) -> None:
        uuid = e["uuid"]
        task = self._known(uuid)
        worker = self._worker(e["hostname"], now)
        worker.task_events += 1
        if e.get("requeue") and uuid in self.tasks:
            self._release(task)
            task.received = task.started = None
        else:
            self._finish(uuid, task, True)
        self._emit(uuid, task, e, worker, self._rejected, (worker.label,), None, now)

    def _on_revoked(self, e: dict, ts: float, now: float) -> None:
        uuid = e["uuid"]
        task = self._known(uuid)
        worker = self._worker(e["hostname"], now)
        worker.task_events += 1
        self._finish(uuid, task, True)
        if e.get("expired"):
            reason = "expired"
        elif e.get("terminated"):
            reason = "terminated"
        else:
            reason = "revoked"
        self._emit(uuid, task, e, worker, self._revoked, (worker.label, reason), None, now)

    def _on_cancelled(self, e: dict, ts: float, now: float) -> None:
        task = self.tasks.get(e["uuid"])
        worker = self._worker(e["hostname"], now)
        worker.task_events += 1
        if task is not None:
            self._release(task)
            task.started = None

    # -- worker events --------------------------------------------------------------------

    def _update_worker(self, worker: Worker, e: dict, ts: float, now: float) -> None:
        worker.last_seen = now
        freq = e.get("freq")
        if type(freq) in (int, float) and freq > 0:
            worker.freq = float(freq)
        for attr in ("sw_ident", "sw_ver", "sw_sys"):
            value = e.get(attr)
            if type(value) is str and value:
                setattr(worker, attr, self.labels.cap(value))
        self._observe_offset(worker.hostname, ts, now)

    def _on_worker_online(self, e: dict, ts: float, now: float) -> None:
        worker = self._worker(e["hostname"], now)
        # A restarted node starts with empty buffers and a fresh 'processed' count.
        worker.drop_buffers()
        worker.active = None
        worker.last_processed = None
        worker.silent_beats = 0
        worker.events_missing = False
        self._update_worker(worker, e, ts, now)

    def _on_heartbeat(self, e: dict, ts: float, now: float) -> None:
        worker = self._worker(e["hostname"], now)
        self._update_worker(worker, e, ts, now)
        active = e.get("active")
        if type(active) is int:
            worker.active = active
        processed = e.get("processed")
        # The wake-up heartbeat carries no active/processed: it says nothing about load.
        if type(processed) is int:
            last = worker.last_processed
            if last is not None and processed > last and worker.task_events == 0:
                worker.silent_beats += 1
            elif worker.task_events:
                worker.silent_beats = 0
            worker.events_missing = worker.silent_beats >= 2
            worker.last_processed = processed
            worker.task_events = 0

    def _on_worker_offline(self, e: dict, ts: float, now: float) -> None:
        worker = self._worker(e["hostname"], now)
        self._update_worker(worker, e, ts, now)
        self._worker_down(worker, now)
        worker.said_goodbye = True

    def _worker_down(self, worker: Worker, now: float) -> None:
        worker.up = False
        worker.down_since = now
        worker.active = 0
        worker.drop_buffers()

    def _remove_worker(self, worker: Worker) -> None:
        del self.workers[worker.hostname]
        label = worker.label
        if any(w.label == label for w in self.workers.values()):
            return
        for series in self.counters.values():
            if "worker" in series.metric.labels:
                series.forget_worker(label, series.metric.labels.index("worker"))

    # -- read side ------------------------------------------------------------------------

    @property
    def series_dropped(self) -> dict[str, int]:
        out = {series.metric.key: series.dropped
               for series in (*self.counters.values(), *self.histograms.values())}
        out[m.WORKER_UP.key] = self.workers_dropped
        return out

    @property
    def task_events_missing(self) -> bool:
        return any(w.up and w.events_missing for w in self.workers.values())



def apply_worker_probe(state: State, hostname: str, pool: int | None,
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

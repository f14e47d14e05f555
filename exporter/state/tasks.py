"""The in-flight task table and the memory of finished tasks' labels."""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple

from celery_events_exporter.labels import UNKNOWN
from celery_events_exporter.state.config import MAX_KEY

if TYPE_CHECKING:
    from celery_events_exporter.state.series import Stamp
    from celery_events_exporter.state.workers import Worker

# Where a task sits in a worker's buffer (received, not started).
NONE, PREFETCHED, SCHEDULED = 0, 1, 2
FINISHED_CAP = 10_000


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
        self.buf = NONE
        self.touched = 0.0  # monotonic
        # Observations held until task-sent names the queue, and the start time (exporter
        # clock) kept for a task-sent that arrives after task-started.
        self.pending: list | None = None
        self.started_at: float | None = None


class Finished(NamedTuple):
    """What is remembered of a task once it left the table: its labels, and the terminal
    event types counted for it (a bit each; 0 when evicted: it may still finish)."""

    name: str | None
    queue: str | None
    ended: int


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


def queue_of(task: Task, worker: Worker | None) -> str:
    """The task's queue label: its own, else its worker's only queue, else unknown."""
    if task.queue is not None:
        return task.queue
    if worker is not None and len(worker.queues) == 1:
        return next(iter(worker.queues))
    return UNKNOWN


def release(task: Task) -> None:
    """Take the task out of its worker's buffer gauge (if it is still that worker's)."""
    buf = task.buf
    if buf:
        worker = task.worker
        if worker is not None and worker.gen == task.wgen:
            if buf == PREFETCHED:
                worker.prefetched -= 1
            else:
                worker.scheduled -= 1
        task.buf = NONE


class TaskTable:
    def __init__(self, max_tasks: int, stamp: Stamp) -> None:
        self.max_tasks = max_tasks
        self.stamp = stamp
        self.tasks: OrderedDict[str, Task] = OrderedDict()
        self.finished: OrderedDict[str, Finished] = OrderedDict()
        self.evicted: dict[str, int] = {"capacity": 0, "ttl": 0}

    def task(self, uuid: str) -> Task:
        """The tracked task for `uuid`, created if new; moved to the fresh end."""
        tasks = self.tasks
        task = tasks.get(uuid)
        if task is None:
            # Both counted as a bad field by the caller.
            if type(uuid) is not str:
                raise TypeError
            if len(uuid) > MAX_KEY:
                raise ValueError
            task = tasks[uuid] = Task()
            if self.finished:
                remembered = self.finished.get(uuid)
                if remembered is not None:
                    # Evicted or finished, and back: its labels are the ones it had.
                    task.name, task.queue = remembered.name, remembered.queue
            if len(tasks) > self.max_tasks:
                self._evict(*tasks.popitem(last=False))
                self.evicted["capacity"] += 1
        else:
            tasks.move_to_end(uuid)
        task.touched = self.stamp.mono
        return task

    def finish(self, uuid: str, task: Task, ended: int) -> None:
        """A terminal event (bit `ended`) was counted: out of the table, labels remembered."""
        in_table = self.tasks.pop(uuid, None) is not None
        release(task)
        remembered = None if in_table else self.finished.get(uuid)
        # Reject(requeue=False) ends a task twice, task-failed then task-rejected: both count.
        self._remember(uuid, task, ended | (remembered.ended if remembered else 0))

    def ended(self, uuid: object, kind: int) -> bool:
        """Whether this terminal event type was counted for the task already (and nothing
        since brought it back): a second one is a re-sent duplicate."""
        remembered = self.finished.get(uuid)  # type: ignore[arg-type]
        return remembered is not None and bool(remembered.ended & kind)

    def _remember(self, uuid: str, task: Task, ended: int) -> None:
        if type(uuid) is not str or len(uuid) <= MAX_KEY:
            finished = self.finished
            if uuid in finished:
                finished.move_to_end(uuid)
            finished[uuid] = Finished(task.name, task.queue, ended)
            if len(finished) > FINISHED_CAP:
                finished.popitem(last=False)

    def _evict(self, uuid: str, task: Task) -> None:
        release(task)
        # A task that outlived the table may still finish: count it under its labels then.
        self._remember(uuid, task, 0)

    def reset_prefetched(self, worker: Worker, before: float) -> int:
        """Take out of `worker`'s prefetch gauge the tasks it received before `before`
        (monotonic) and nothing since: after a broker gap they may have started or
        finished unseen. One still waiting is under-counted until it starts, seconds
        later, rather than a phantom counted until the TTL."""
        reset = 0
        for task in self.tasks.values():
            # Tasks of an earlier generation left the gauge when their worker went away.
            if task.buf == PREFETCHED and task.worker is worker and \
                    task.wgen == worker.gen and task.touched <= before:
                release(task)
                reset += 1
        return reset

    def expire(self, now: float, ttl: float) -> None:
        """Drop tasks without an event for `ttl`, except those a live worker still holds:
        started (a long task) or scheduled (an ETA far out)."""
        tasks = self.tasks
        horizon = now - ttl
        # Tasks move to the end on every event, so the stalest sit at the front; kept ones
        # go to the end too, so each task is looked at once per call.
        for _ in range(len(tasks)):
            uuid = next(iter(tasks))
            task = tasks[uuid]
            if task.touched > horizon:
                break
            worker = task.worker
            # Started counts while the worker says it runs something: a started task whose
            # end was lost (a broker gap) goes once the worker reports nothing active.
            if worker is not None and worker.up and worker.gen == task.wgen and \
                    ((task.started is not None and worker.active != 0) or
                     task.buf == SCHEDULED):
                task.touched = now
                tasks.move_to_end(uuid)
                continue
            del tasks[uuid]
            self._evict(uuid, task)
            self.evicted["ttl"] += 1

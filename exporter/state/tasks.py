"""The in-flight task table and the memory of finished tasks' labels."""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple

from exporter.labels import UNKNOWN
from exporter.state.config import MAX_KEY

if TYPE_CHECKING:
    from exporter.state.workers import Worker

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
        self.touched = 0.0
        # Observations held until task-sent names the queue, and the start time (exporter
        # clock) kept for a task-sent that arrives after task-started.
        self.pending: list | None = None
        self.started_at: float | None = None


class Finished(NamedTuple):
    """What is remembered of a task once it left the table: its labels."""

    name: str | None
    queue: str | None


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
    def __init__(self, max_tasks: int) -> None:
        self.max_tasks = max_tasks
        self.tasks: OrderedDict[str, Task] = OrderedDict()
        self.finished: OrderedDict[str, Finished] = OrderedDict()
        self.evicted: dict[str, int] = {"capacity": 0, "ttl": 0}

    def task(self, uuid: str, now: float) -> Task:
        """The tracked task for `uuid`, created if new; moved to the fresh end."""
        tasks = self.tasks
        task = tasks.get(uuid)
        if task is None:
            if type(uuid) is not str:
                raise TypeError("uuid")
            if len(uuid) > MAX_KEY:
                raise ValueError("uuid too long")
            task = tasks[uuid] = Task()
            if len(tasks) > self.max_tasks:
                release(tasks.popitem(last=False)[1])
                self.evicted["capacity"] += 1
        else:
            tasks.move_to_end(uuid)
        task.touched = now
        return task

    def finish(self, uuid: str, task: Task, remember: bool) -> None:
        self.tasks.pop(uuid, None)
        release(task)
        if remember and (type(uuid) is not str or len(uuid) <= MAX_KEY):
            finished = self.finished
            finished[uuid] = Finished(task.name, task.queue)
            if len(finished) > FINISHED_CAP:
                finished.popitem(last=False)

    def expire(self, horizon: float) -> None:
        """Drop tasks whose last event is older than `horizon`."""
        tasks = self.tasks
        # Tasks move to the end on every event, so the stalest sit at the front.
        while tasks:
            task = tasks[next(iter(tasks))]
            if task.touched > horizon:
                break
            tasks.popitem(last=False)
            release(task)
            self.evicted["ttl"] += 1

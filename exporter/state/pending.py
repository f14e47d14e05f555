"""Worker-side observations held until the task's own task-sent names its queue.

A producer publishes task-sent after the message itself, so under load a worker's events
often arrive first; labelling them at once would say `queue="unknown"` for tasks whose
queue is about to be known. Held observations are replayed when task-sent arrives, or
after PENDING_GRACE with the best label there is then.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import NamedTuple

from celery_events_exporter.labels import UNKNOWN, Labeler
from celery_events_exporter.state.config import MAX_KEY
from celery_events_exporter.state.series import Series
from celery_events_exporter.state.tasks import Task, queue_of
from celery_events_exporter.state.workers import Worker

# How long worker-side observations wait for a late task-sent, and how long after the last
# task-sent we keep expecting them (producers without task_send_sent_event send none).
PENDING_GRACE = 5.0
SENT_MEMORY = 300.0


class Op(NamedTuple):
    """One held update: a count (value None) or an observation, and the labels after the
    task's (name, queue)."""

    series: Series
    tail: tuple[str, ...]
    value: float | None


class Held(NamedTuple):
    task: Task
    deadline: float


def apply(op: Op, names: tuple[str, str], uuid: str) -> None:
    if op.value is None:
        op.series.inc((*names, *op.tail))
    else:
        op.series.observe(names, op.value, uuid)


class Pending:
    def __init__(self, labels: Labeler, max_tasks: int) -> None:
        self.labels = labels
        self.max_tasks = max_tasks
        self.held: OrderedDict[str, Held] = OrderedDict()
        # Until a tick says otherwise, assume producers send task-sent (the usual setup).
        self.sent_seen = math.inf

    def wants(self, uuid: str, task: Task, worker: Worker, now: float) -> bool:
        """Whether an observation of this task should wait for its task-sent."""
        return task.queue is None and len(worker.queues) != 1 and \
            not now - self.sent_seen >= SENT_MEMORY and \
            (type(uuid) is not str or len(uuid) <= MAX_KEY)  # hostile ids: not held

    def hold(self, uuid: str, task: Task, op: Op, now: float) -> None:
        if task.pending is None:
            task.pending = []
            held = self.held
            held[uuid] = Held(task, now + PENDING_GRACE)
            if len(held) > self.max_tasks:
                self.resolve(next(iter(held)))
        task.pending.append(op)

    def resolve(self, uuid: str) -> None:
        """Replay the task's held observations under the best labels known now."""
        task = self.held.pop(uuid).task  # callers resolve only what is held
        ops, task.pending = task.pending or [], None
        name = self.labels.task(task.name) if task.name is not None else UNKNOWN
        if name is None:
            return
        names = (name, queue_of(task, task.worker))
        for op in ops:
            apply(op, names, uuid)

    def due(self, now: float) -> None:
        """Resolve what waited past its grace."""
        if self.sent_seen == math.inf:
            self.sent_seen = now
        held = self.held
        while held:
            uuid = next(iter(held))
            if held[uuid].deadline > now:
                break
            self.resolve(uuid)

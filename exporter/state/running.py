"""Tasks executing now: how many per (name, queue), since when, and which died with a worker.

An entry (uuid -> since) is added at task-started and leaves at a terminal event (popped by
the handlers) or when its worker goes down (`lost`, which counts it as interrupted).
Retries, cancellations and requeues clear `task.started` instead: such entries are dropped
lazily by `snapshot`, so the event path pays one dict store per start and one pop per end.
The task itself is read from the in-flight table, which keeps started tasks past the TTL
while their worker lives; a task evicted for capacity (more tasks in flight than
--max-tasks) leaves the gauges.

Ages are on the exporter's monotonic clock: the start is the monotonic time the event was
received, minus how long ago (offset-corrected) the worker says it started.
"""

from __future__ import annotations

from collections.abc import Mapping

from celery_events_exporter.labels import UNKNOWN, Labeler
from celery_events_exporter.state.series import Series
from celery_events_exporter.state.tasks import Task, queue_of
from celery_events_exporter.state.workers import Worker


class Running:
    def __init__(self, labels: Labeler, interrupted: Series, cap: int,
                 tasks: Mapping[str, Task]) -> None:
        self.labels = labels
        self.interrupted = interrupted
        self.cap = cap
        self.tasks = tasks
        # uuid -> since (monotonic). A float, not a tuple: nothing allocated per start for
        # the garbage collector to track; the worker and its generation are on the task.
        self.runs: dict[str, float] = {}

    # task-started stores `runs[uuid] = since` itself (no call on the hot path); the tick
    # trims.

    def trim(self) -> None:
        # More executions than the table holds tasks: the oldest entries' ends were missed.
        runs = self.runs
        while len(runs) > self.cap:
            del runs[next(iter(runs))]

    def _names(self, task: Task, worker: Worker | None) -> tuple[str, str] | None:
        name = task.name
        label = self.labels.task(name) if name is not None else UNKNOWN
        if label is None:
            return None
        return label, queue_of(task, worker)

    def _current(self, uuid: str) -> Task | None:
        """The task if it is still executing where it started (not retried, cancelled,
        evicted, or written off with its worker)."""
        task = self.tasks.get(uuid)
        if task is None or task.started is None:
            return None
        worker = task.worker
        if worker is None or worker.gen != task.wgen:
            return None
        return task

    def lost(self, worker: Worker) -> None:
        """The worker went down or restarted: what it was executing will not finish there.
        Call before its generation moves on."""
        runs = self.runs
        gone = []
        for uuid in runs:
            task = self._current(uuid)
            if task is not None and task.worker is worker:
                gone.append((uuid, task))
        for uuid, task in gone:
            del runs[uuid]
            names = self._names(task, worker)
            if names is not None:
                self.interrupted.inc((*names, worker.label))

    def snapshot(self, mono: float) -> dict[tuple[str, str], tuple[int, float]]:
        """(name, queue) -> (running, age of the oldest), dropping ended entries."""
        out: dict[tuple[str, str], tuple[int, float]] = {}
        runs = self.runs
        current = self._current
        for uuid in [u for u in runs if current(u) is None]:
            del runs[uuid]
        tasks = self.tasks
        for uuid, since in runs.items():
            task = tasks[uuid]
            names = self._names(task, task.worker)
            if names is None:
                continue
            age = max(mono - since, 0.0)
            seen = out.get(names)
            out[names] = (1, age) if seen is None else (seen[0] + 1, max(seen[1], age))
        return out

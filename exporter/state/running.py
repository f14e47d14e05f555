"""Tasks executing now: how many per (name, queue), since when, and which died with a worker.

An entry is added at task-started and leaves at a terminal event (`stop`) or when its
worker goes down (`lost`, which counts it as interrupted). Retries, cancellations and
requeues clear `task.started` instead: such entries are dropped lazily by `snapshot`, so
the event path pays one dict store per start and one pop per end.

Ages are on the exporter's monotonic clock: the start is the monotonic time the event was
received, minus how long ago (offset-corrected) the worker says it started.
"""

from __future__ import annotations

from typing import NamedTuple

from exporter.labels import UNKNOWN, Labeler
from exporter.state.series import Series
from exporter.state.tasks import Task, queue_of
from exporter.state.workers import Worker


class Run(NamedTuple):
    task: Task
    since: float  # monotonic
    worker: Worker
    wgen: int


class Running:
    def __init__(self, labels: Labeler, interrupted: Series, cap: int) -> None:
        self.labels = labels
        self.interrupted = interrupted
        self.cap = cap
        self.runs: dict[str, Run] = {}

    def start(self, uuid: str, task: Task, since: float, worker: Worker) -> None:
        runs = self.runs
        runs[uuid] = Run(task, since, worker, worker.gen)
        if len(runs) > self.cap:
            # More executions than the table holds tasks: entries whose end was missed.
            del runs[next(iter(runs))]

    def stop(self, uuid: object) -> None:
        self.runs.pop(uuid, None)  # type: ignore[call-overload]

    def _names(self, task: Task, worker: Worker | None) -> tuple[str, str] | None:
        name = task.name
        label = self.labels.task(name) if name is not None else UNKNOWN
        if label is None:
            return None
        return label, queue_of(task, worker)

    def lost(self, worker: Worker) -> None:
        """The worker went down or restarted: what it was executing will not finish there.
        Call before its generation moves on."""
        runs = self.runs
        gone = [uuid for uuid, run in runs.items()
                if run.worker is worker and run.wgen == worker.gen]
        for uuid in gone:
            run = runs.pop(uuid)
            if run.task.started is None:
                continue  # retried or cancelled since: that execution ended
            names = self._names(run.task, worker)
            if names is not None:
                self.interrupted.inc((*names, worker.label))

    def snapshot(self, mono: float) -> dict[tuple[str, str], tuple[int, float]]:
        """(name, queue) -> (running, age of the oldest), dropping ended entries."""
        out: dict[tuple[str, str], tuple[int, float]] = {}
        runs = self.runs
        for uuid in [u for u, run in runs.items()
                     if run.task.started is None or run.worker.gen != run.wgen]:
            del runs[uuid]
        for run in runs.values():
            names = self._names(run.task, run.worker)
            if names is None:
                continue
            age = max(mono - run.since, 0.0)
            seen = out.get(names)
            out[names] = (1, age) if seen is None else (seen[0] + 1, max(seen[1], age))
        return out

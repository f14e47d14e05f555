"""Tasks executing now: how many per (name, queue), since when, and which died with a worker.

An entry is added at task-started and leaves at a terminal event (popped by the
handlers) or when its
worker goes down (`lost`, which counts it as interrupted). Retries, cancellations and
requeues clear `task.started` instead: such entries are dropped lazily by `snapshot`, so
the event path pays one dict store per start and one pop per end.

Ages are on the exporter's monotonic clock: the start is the monotonic time the event was
received, minus how long ago (offset-corrected) the worker says it started.
"""

from __future__ import annotations

from exporter.labels import UNKNOWN, Labeler
from exporter.state.series import Series
from exporter.state.tasks import Task, queue_of
from exporter.state.workers import Worker

# An entry: (task, since on the monotonic clock, worker, worker generation at the start).
# A plain tuple: a NamedTuple costs twice as much to build, on every task-started.
Run = tuple[Task, float, Worker, int]


class Running:
    def __init__(self, labels: Labeler, interrupted: Series, cap: int) -> None:
        self.labels = labels
        self.interrupted = interrupted
        self.cap = cap
        self.runs: dict[str, Run] = {}

    def start(self, uuid: str, task: Task, since: float, worker: Worker) -> None:
        """What the task-started handler does inline (it saves a call on the hot path)."""
        self.runs[uuid] = (task, since, worker, worker.gen)
        if len(self.runs) > self.cap:
            self.trim()

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

    def lost(self, worker: Worker) -> None:
        """The worker went down or restarted: what it was executing will not finish there.
        Call before its generation moves on."""
        runs = self.runs
        gone = [uuid for uuid, run in runs.items()
                if run[2] is worker and run[3] == worker.gen]
        for uuid in gone:
            task = runs.pop(uuid)[0]
            if task.started is None:
                continue  # retried or cancelled since: that execution ended
            names = self._names(task, worker)
            if names is not None:
                self.interrupted.inc((*names, worker.label))

    def snapshot(self, mono: float) -> dict[tuple[str, str], tuple[int, float]]:
        """(name, queue) -> (running, age of the oldest), dropping ended entries."""
        out: dict[tuple[str, str], tuple[int, float]] = {}
        runs = self.runs
        for uuid in [u for u, run in runs.items()
                     if run[0].started is None or run[2].gen != run[3]]:
            del runs[uuid]
        for task, since, worker, _ in runs.values():
            names = self._names(task, worker)
            if names is None:
                continue
            age = max(mono - since, 0.0)
            seen = out.get(names)
            out[names] = (1, age) if seen is None else (seen[0] + 1, max(seen[1], age))
        return out

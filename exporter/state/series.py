"""Counters and histograms keyed by label tuples, capped in size, with creation times.

A counter that springs into existence at 1 has no earlier sample for `rate()` and
`increase()` to subtract from, so a stock Prometheus never sees its first increment (the
first failure of a new worker or exception class, invisible to the failure alerts). Each
new series is therefore listed in `fresh` until a scrape has shown it at 0 (see
`take_fresh`), and keeps its creation time in `created` for OpenMetrics `_created`.
"""

from __future__ import annotations

from bisect import bisect_left

from celery_events_exporter import metrics as m

# OpenMetrics caps an exemplar's labels at 128 characters: task_id="<id>" must fit.
MAX_EXEMPLAR = 100


class Stamp:
    """The state's current times, shared by its series: set once per ingested batch."""

    __slots__ = ("mono", "wall")

    def __init__(self) -> None:
        self.wall = 0.0  # exporter wall clock (unix seconds): what `_created` reports
        self.mono = 0.0  # exporter monotonic clock: what ages are measured on


class Series:
    """Counters and histograms for one metric: label tuple -> value, capped in size."""

    __slots__ = ("bounds", "created", "data", "dropped", "exemplars", "fresh", "limit",
                 "metric", "stamp")

    def __init__(self, metric: m.Metric, limit: int, stamp: Stamp,
                 bounds: tuple[float, ...] = (), exemplars: bool = False) -> None:
        self.metric = metric
        self.limit = limit
        self.bounds = bounds
        self.data: dict[tuple[str, ...], list[float]] = {}
        self.dropped = 0
        self.stamp = stamp
        # key -> wall time the series was created (OpenMetrics `_created`).
        self.created: dict[tuple[str, ...], float] = {}
        # key -> monotonic creation time, for series no scrape has shown at 0 yet.
        self.fresh: dict[tuple[str, ...], float] = {}
        # Histograms: per bucket the latest (task id, value, wall time) observed, for
        # OpenMetrics exemplars: one per bucket per series, the same keys as `data`.
        self.exemplars: dict[tuple[str, ...], list] | None = {} if exemplars else None

    def _new(self, key: tuple[str, ...], size: int) -> list[float] | None:
        if len(self.data) >= self.limit:
            self.dropped += 1
            return None
        stamp = self.stamp
        self.created[key] = stamp.wall
        self.fresh[key] = stamp.mono
        cell = self.data[key] = [0.0] * size
        return cell

    def take_fresh(self, cutoff: float) -> set[tuple[str, ...]]:
        """The series this scrape shows at 0; those created at or before `cutoff` (the
        configured delay ago) have then been shown at 0 long enough and leave `fresh`."""
        fresh = self.fresh
        if not fresh:
            return set()
        zero = set(fresh)
        # Insertion order is creation order: the old enough ones sit at the front.
        for key in list(fresh):
            if fresh[key] > cutoff:
                break
            del fresh[key]
        return zero

    def inc(self, key: tuple[str, ...]) -> None:
        cell = self.data.get(key)
        if cell is None:
            cell = self._new(key, 1)
            if cell is None:
                return
        cell[0] += 1

    def observe(self, key: tuple[str, ...], value: float, task_id: object = None) -> None:
        # Cells hold per-bucket counts (non-cumulative, +Inf last) followed by the sum.
        cell = self.data.get(key)
        if cell is None:
            cell = self._new(key, len(self.bounds) + 2)
            if cell is None:
                return
        bucket = bisect_left(self.bounds, value)
        cell[bucket] += 1
        cell[-1] += value
        exemplars = self.exemplars
        if exemplars is not None and type(task_id) is str and len(task_id) <= MAX_EXEMPLAR:
            row = exemplars.get(key)
            if row is None:
                row = exemplars[key] = [None] * (len(self.bounds) + 1)
            row[bucket] = (task_id, value, self.stamp.wall)

    def forget_worker(self, label: str, position: int) -> None:
        for key in [k for k in self.data if k[position] == label]:
            del self.data[key]
            del self.created[key]  # created with the data
            self.fresh.pop(key, None)  # unless a scrape showed it already
            if self.exemplars is not None:
                self.exemplars.pop(key, None)

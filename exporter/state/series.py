"""Counters and histograms keyed by label tuples, capped in size."""

from __future__ import annotations

from bisect import bisect_left

from exporter import metrics as m


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

"""The oldest message waiting in each queue: published (task-sent) and not yet received.

The in-flight table cannot answer this: it is an LRU that, under a backlog, evicts exactly
the oldest tasks. This room keeps its own bounded map uuid -> since (publish time, or the
ETA when later, on the exporter's monotonic clock) and a heap per queue ordered by since.
Received, started or finished tasks leave the map only (one dict pop on the event path);
their heap entries are dropped lazily when they reach the top, and the heaps are rebuilt
from the map when stale entries outnumber live ones.

At the cap, new publishes are not tracked; the queue remembers the earliest of them, so
once the tracked ones drain the age is still bounded from above rather than lost.
"""

from __future__ import annotations

import heapq

_SLACK = 1024  # stale heap entries tolerated beyond the live ones before a rebuild


class Waiting:
    def __init__(self, cap: int, max_queues: int) -> None:
        self.cap = cap
        self.max_queues = max_queues
        self.since: dict[str, float] = {}
        self.heaps: dict[str, list[tuple[float, str]]] = {}
        self.entries = 0  # heap entries, live and stale
        self.untracked: dict[str, float] = {}  # queue -> earliest since refused at the cap
        self.refused = 0

    def sent(self, uuid: str, queue: str, since: float) -> None:
        heap = self.heaps.get(queue)
        if heap is None:
            if len(self.heaps) >= self.max_queues:
                self.refused += 1
                return
            heap = self.heaps[queue] = []
        since_map = self.since
        if len(since_map) >= self.cap and uuid not in since_map:
            self.refused += 1
            first = self.untracked.get(queue)
            if first is None or since < first:
                self.untracked[queue] = since
            return
        since_map[uuid] = since
        heapq.heappush(heap, (since, uuid))
        self.entries += 1
        if self.entries > 2 * len(since_map) + _SLACK:
            self._rebuild()

    def gone(self, uuid: object) -> None:
        """Received by a worker (or already started or finished): no longer waiting."""
        self.since.pop(uuid, None)  # type: ignore[call-overload]

    def _rebuild(self) -> None:
        live: dict[str, list[tuple[float, str]]] = {q: [] for q in self.heaps}
        since = self.since
        for queue, heap in self.heaps.items():
            for entry in heap:
                if since.get(entry[1]) == entry[0]:
                    live[queue].append(entry)
        for heap in live.values():
            heapq.heapify(heap)
        self.heaps = live
        self.entries = sum(len(h) for h in live.values())

    def _top(self, queue: str) -> float | None:
        heap = self.heaps[queue]
        since = self.since
        while heap:
            at, uuid = heap[0]
            if since.get(uuid) == at:
                return at
            heapq.heappop(heap)
            self.entries -= 1
        return None

    def drained(self, queue: str, before: float) -> None:
        """The broker says the queue was empty at `before` (monotonic): what was published
        earlier is not waiting, whatever events were lost."""
        heap = self.heaps.get(queue)
        if heap is None:
            return
        since = self.since
        while heap and heap[0][0] <= before:
            at, uuid = heapq.heappop(heap)
            self.entries -= 1
            if since.get(uuid) == at:
                del since[uuid]
        first = self.untracked.get(queue)
        if first is not None and first <= before:
            del self.untracked[queue]

    def snapshot(self, mono: float) -> dict[str, float]:
        """queue -> age of its oldest waiting message (0 when none, or not due yet)."""
        out: dict[str, float] = {}
        for queue in self.heaps:
            oldest = self._top(queue)
            if oldest is None:
                oldest = self.untracked.get(queue)
            out[queue] = 0.0 if oldest is None else max(mono - oldest, 0.0)
        return out

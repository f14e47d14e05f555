"""The oldest message waiting in each queue: published (task-sent) and not yet received.

The in-flight table cannot answer this: it is an LRU that, under a backlog, evicts exactly
the oldest tasks. This room keeps its own bounded map uuid -> since (publish time, or the
ETA when later, on the exporter's monotonic clock) and a heap per queue ordered by since.

The event path stays cheap: task-sent only stores uuid -> since in `fresh` (a dict of
strings and floats: no object kept alive, nothing for the garbage collector to traverse);
`flush` (each tick, about once a second, and before a snapshot) moves those still waiting
into the map and heaps, so the common task, received within the second, never reaches a
heap. Received, started or finished tasks leave the map only (the handlers pop `since`,
one C-level dict pop); their heap entries are dropped lazily when they reach the top, and
a heap is rebuilt from the map when it outgrows twice the live entries (plus slack).

At the cap, new publishes are not tracked; the queue remembers the earliest of them, so
once the tracked ones drain the age is still bounded from above rather than lost.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from celery_events_exporter.state.tasks import Finished, Task

_push = heapq.heappush
_SLACK = 1024  # stale heap entries tolerated beyond the live ones before a rebuild


class Waiting:
    def __init__(self, cap: int, max_queues: int, tasks: Mapping[str, Task],
                 finished: Mapping[str, Finished]) -> None:
        self.cap = cap
        self.max_queues = max_queues
        self.tasks = tasks
        # Tasks that ended (terminal bits set) are not waiting; evicted ones (no bits) may be.
        self.finished = finished
        self.fresh: dict[str, float] = {}  # uuid -> since, published since the last flush
        self.since: dict[str, float] = {}
        self.heaps: dict[str, list[tuple[float, str]]] = {}
        self.untracked: dict[str, float] = {}  # queue -> earliest since refused at the cap

    def flush(self) -> None:
        """Track what was published since the last flush and is still waiting."""
        fresh = self.fresh
        if not fresh:
            return
        batch = list(fresh.items())
        fresh.clear()  # in place: the handlers hold it
        tasks, finished = self.tasks, self.finished
        for uuid, since in batch:
            task = tasks.get(uuid)
            if task is not None:
                if task.received is None and task.started is None and task.queue is not None:
                    self.sent(uuid, task.queue, since)
                continue
            # Not in the table: finished (not waiting), or evicted by a backlog bigger than
            # the table (still waiting: this room must keep exactly those).
            gone = finished.get(uuid)
            if gone is not None and not gone.ended and gone.queue is not None:
                self.sent(uuid, gone.queue, since)

    def sent(self, uuid: str, queue: str, since: float) -> None:
        heap = self.heaps.get(queue)
        if heap is None:
            if len(self.heaps) >= self.max_queues:
                return
            heap = self.heaps[queue] = []
        since_map = self.since
        if len(since_map) >= self.cap and uuid not in since_map:
            first = self.untracked.get(queue)
            if first is None or since < first:
                self.untracked[queue] = since
            return
        since_map[uuid] = since
        _push(heap, (since, uuid))
        if len(heap) > 2 * len(since_map) + _SLACK:
            self._rebuild()

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

    def _top(self, queue: str) -> float | None:
        heap = self.heaps[queue]
        since, tasks = self.since, self.tasks
        while heap:
            at, uuid = heap[0]
            if since.get(uuid) == at:
                # Only task-received pops `since` on the event path: a task that started
                # with its task-received lost, or ended unreceived (revoked), goes here.
                task = tasks.get(uuid)
                if task is not None:
                    if task.received is None and task.started is None:
                        return at
                else:
                    gone = self.finished.get(uuid)
                    if gone is None or not gone.ended:
                        return at  # evicted from the table by a backlog: still waiting
                del since[uuid]
            heapq.heappop(heap)
        return None

    def drained(self, queue: str, before: float) -> None:
        """The broker says the queue was empty at `before` (monotonic): what was published
        earlier is not waiting, whatever events were lost."""
        self.flush()
        heap = self.heaps.get(queue)
        if heap is None:
            return
        since = self.since
        while heap and heap[0][0] <= before:
            at, uuid = heapq.heappop(heap)
            if since.get(uuid) == at:
                del since[uuid]
        first = self.untracked.get(queue)
        if first is not None and first <= before:
            del self.untracked[queue]

    def snapshot(self, mono: float) -> dict[str, float]:
        """queue -> age of its oldest waiting message (0 when none, or not due yet)."""
        self.flush()
        out: dict[str, float] = {}
        for queue in self.heaps:
            oldest = self._top(queue)
            if oldest is None:
                oldest = self.untracked.get(queue)
            out[queue] = 0.0 if oldest is None else max(mono - oldest, 0.0)
        return out

    @property
    def entries(self) -> int:
        """Heap entries, live and stale (what the bound is about)."""
        return sum(len(h) for h in self.heaps.values())

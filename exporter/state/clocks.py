"""Per-host clock offsets: a robust minimum of (receive time - sender timestamp).

Waits that cross hosts (published on a producer, started on a worker) are corrected with
the sender's offset; waits measured on one worker use that worker's clock alone.

The offset is the smallest delay seen, the transit of the fastest message, but not the
very smallest: one sample alone (a clock stepped by NTP, a heartbeat stamped before a
step) cannot set it; it takes the second smallest, over the current window and the one
before. Samples stamped in the future beyond FUTURE_TOLERANCE are not used at all: a
sender ahead of the receiver means a clock being stepped, not a transit.
"""

from __future__ import annotations

import math

from celery_events_exporter.labels import Labeler
from celery_events_exporter.state.config import MAX_KEY

OFFSET_WINDOW_SECONDS = 300.0
FUTURE_TOLERANCE = 1.0
_MAX_HOST_CACHE = 50_000
_INF = math.inf


def _estimate(cell: list[float]) -> float:
    """The second smallest delay, or the only one."""
    return cell[1] if cell[1] != _INF else cell[0]


class Clocks:
    def __init__(self, labels: Labeler, max_hosts: int) -> None:
        self.labels = labels
        self.max_hosts = max_hosts
        # host -> [smallest, second smallest] of receive - timestamp: current window and
        # the one before it.
        self.offsets: dict[str, list[float]] = {}
        self.offsets_prev: dict[str, list[float]] = {}
        self.rolled = 0.0  # monotonic
        self._hosts: dict[str, str] = {}

    def host(self, hostname: str) -> str:
        host = self._hosts.get(hostname)
        if host is None:
            if len(self._hosts) >= _MAX_HOST_CACHE:
                self._hosts.clear()
            host = hostname.partition("@")[2] or hostname
            if len(hostname) > MAX_KEY:
                return host[:MAX_KEY]  # hostile length: neither cached nor kept whole
            self._hosts[hostname] = host
        return host

    def observe(self, hostname: str, ts: float, now: float) -> float:
        """Record one sample and return the host's offset to add to its timestamps."""
        host = self._hosts.get(hostname) or self.host(hostname)
        delta = now - ts
        cell = self.offsets.get(host)
        if delta < -FUTURE_TOLERANCE:
            cur = _INF if cell is None else _estimate(cell)
        elif cell is None:
            cur = delta
            if len(self.offsets) < self.max_hosts:
                self.offsets[host] = [delta, _INF]
        else:
            # Inline _estimate: this runs for most events.
            low, second = cell
            if delta < low:
                cell[0], cell[1] = delta, low
                cur = low
            else:
                if delta < second:
                    cell[1] = second = delta
                cur = second  # finite: a finite delta replaced an infinite second
        prev = self.offsets_prev.get(host)
        if prev is not None:
            before = prev[1] if prev[1] != _INF else prev[0]
            if before < cur:
                return before
        return cur if cur != _INF else 0.0

    def roll(self, mono: float) -> None:
        if mono - self.rolled >= OFFSET_WINDOW_SECONDS:
            self.offsets_prev, self.offsets = self.offsets, {}
            self.rolled = mono

    def estimates(self) -> dict[str, float]:
        """host label (capped) -> offset in use, for the hosts heard from lately."""
        out: dict[str, float] = {}
        cap = self.labels.cap
        room = self.max_hosts  # like every labelled family: at most max_series hosts
        for window in (self.offsets, self.offsets_prev):
            for host, cell in window.items():
                label = cap(host)
                value = _estimate(cell)
                known = out.get(label)
                if known is None:
                    if room <= 0:
                        continue
                    room -= 1
                    out[label] = value
                elif value < known:
                    out[label] = value
        return out

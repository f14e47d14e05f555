"""Per-host clock offsets: min(receive time - sender timestamp) over a rolling window.

Waits that cross hosts (published on a producer, started on a worker) are corrected with
the sender's offset; waits measured on one worker use that worker's clock alone.
"""

from __future__ import annotations

from exporter.state.config import MAX_KEY

OFFSET_WINDOW_SECONDS = 300.0
_MAX_OFFSET_HOSTS = 10_000
_MAX_HOST_CACHE = 50_000


class Clocks:
    def __init__(self) -> None:
        # host -> min(receive - timestamp): current window and the one before it.
        self.offsets: dict[str, float] = {}
        self.offsets_prev: dict[str, float] = {}
        self.rolled = 0.0
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
        host = self.host(hostname)
        delta = now - ts
        offsets = self.offsets
        cur = offsets.get(host)
        if cur is None:
            cur = delta
            if len(offsets) < _MAX_OFFSET_HOSTS:
                offsets[host] = delta
        elif delta < cur:
            offsets[host] = cur = delta
        prev = self.offsets_prev.get(host)
        return cur if prev is None or cur < prev else prev

    def roll(self, now: float) -> None:
        if now - self.rolled >= OFFSET_WINDOW_SECONDS:
            self.offsets_prev, self.offsets = self.offsets, {}
            self.rolled = now

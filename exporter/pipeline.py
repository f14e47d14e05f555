"""The one door into the state: consumers hand it raw payloads, scrapes read through it.

Consumers call it from the ingest thread; the collector takes `lock` only to copy a
snapshot, so a scrape delays ingest by the time of a dict copy, never by rendering.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from celery_events_exporter.decode import DEFAULT_MAX_BYTES, Invalid, decode_body, decode_envelope
from celery_events_exporter.state import State

log = logging.getLogger(__name__)
TICK_SECONDS = 1.0


class Pipeline:
    def __init__(self, state: State, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.state = state
        self.lock = threading.Lock()
        self.max_bytes = max_bytes
        self.connected = False
        self.reconnects = 0
        self.disconnected_since: float | None = None
        self.started = time.time()
        self._next_tick = 0.0
        self._missing_logged = False

    def envelopes(self, raws: Iterable[bytes], now: float) -> None:
        """Redis pub/sub payloads (kombu JSON envelopes) received at `now`."""
        # Decoding is pure: do it before taking the lock, so a scrape waits at most for
        # the state updates of one read, and apply the read's events in one call (the
        # same numbers as one call per message: they share `now`).
        max_bytes = self.max_bytes
        events: list = []
        extend = events.extend
        invalid = None
        decoded = False
        for raw in raws:
            try:
                extend(decode_envelope(raw, max_bytes))
            except Invalid as exc:
                if invalid is None:
                    invalid = []
                invalid.append(exc.reason)
                continue
            decoded = True
        state = self.state
        with self.lock:
            if invalid is not None:
                for reason in invalid:
                    state.invalid_event(reason)
            if decoded:
                state.ingest(events, now)
            if now >= self._next_tick:
                self._tick(now)

    def body(self, body: bytes | str, content_type: str | None, now: float) -> None:
        """One AMQP (or other kombu transport) message body received at `now`."""
        state = self.state
        with self.lock:
            try:
                events = decode_body(body, content_type, self.max_bytes)
            except Invalid as exc:
                state.invalid_event(exc.reason)
            else:
                state.ingest(events, now)
            if now >= self._next_tick:
                self._tick(now)

    def bodies(self, messages: Iterable[tuple[bytes, str | None]], now: float) -> None:
        """AMQP (body, content type) pairs of one socket read, received at `now`: decoded
        outside the lock and applied in one call, as `envelopes` does for Redis."""
        max_bytes = self.max_bytes
        events: list = []
        extend = events.extend
        invalid = None
        decoded = False
        for body, content_type in messages:
            try:
                extend(decode_body(body, content_type, max_bytes))
            except Invalid as exc:
                if invalid is None:
                    invalid = []
                invalid.append(exc.reason)
                continue
            decoded = True
        state = self.state
        with self.lock:
            if invalid is not None:
                for reason in invalid:
                    state.invalid_event(reason)
            if decoded:
                state.ingest(events, now)
            if now >= self._next_tick:
                self._tick(now)

    def idle(self, now: float) -> None:
        if now >= self._next_tick:
            with self.lock:
                self._tick(now)

    def _tick(self, now: float) -> None:
        self._next_tick = now + TICK_SECONDS
        self.state.tick(now)
        missing = self.state.task_events_missing
        if missing != self._missing_logged:
            self._missing_logged = missing
            if missing:
                log.warning("workers are processing tasks but send no task events: start "
                            "them with -E, set worker_send_task_events=True, or run "
                            "`celery control enable_events`")

    def set_connected(self, connected: bool, now: float) -> None:
        with self.lock:
            if connected and not self.connected:
                if self.disconnected_since is not None:
                    log.warning("broker connection back after %.1fs; events published in "
                                "the gap were not seen", now - self.disconnected_since)
                # Heartbeats could not arrive while we were away: do not call workers dead
                # for our own outage.
                for worker in self.state.workers.values():
                    if worker.up:
                        worker.last_seen = max(worker.last_seen, now)
                self.disconnected_since = None
            elif not connected and self.connected:
                self.reconnects += 1
                self.disconnected_since = now
            elif not connected and self.disconnected_since is None:
                self.disconnected_since = now
            self.connected = connected

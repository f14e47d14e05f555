"""The one door into the state: consumers hand it raw payloads, scrapes read through it.

Consumers pass the wall-clock receive time (`now`); the pipeline reads the monotonic clock
itself and hands both to the state, which measures every age on the monotonic one.

Consumers call it from the ingest thread; the collector takes `lock` only to copy a
snapshot, so a scrape delays ingest by the time of a dict copy, never by rendering.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

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
        max_bytes = self.max_bytes
        self._decode_and_apply(raws, now, lambda raw: decode_envelope(raw, max_bytes))

    def bodies(self, messages: Iterable[tuple[bytes, str | None]], now: float) -> None:
        """AMQP (body, content type) pairs of one socket read, received at `now`."""
        max_bytes = self.max_bytes
        self._decode_and_apply(messages, now,
                               lambda message: decode_body(message[0], message[1], max_bytes))

    def _decode_and_apply(self, items: Iterable[Any], now: float,
                          decode: Callable[[Any], list]) -> None:
        # Decoding is pure: do it before taking the lock, so a scrape waits at most for
        # the state updates of one read, and apply the read's events in one call (the
        # same numbers as one call per message: they share `now`).
        events: list = []
        extend = events.extend
        invalid = None
        decoded = False
        for item in items:
            try:
                extend(decode(item))
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
            mono = time.monotonic()
            if decoded:
                state.ingest(events, now, mono)
            if mono >= self._next_tick:
                self._tick(now, mono)

    def body(self, body: bytes | str, content_type: str | None, now: float) -> None:
        """One AMQP (or other kombu transport) message body received at `now`."""
        state = self.state
        with self.lock:
            mono = time.monotonic()
            try:
                events = decode_body(body, content_type, self.max_bytes)
            except Invalid as exc:
                state.invalid_event(exc.reason)
            else:
                state.ingest(events, now, mono)
            if mono >= self._next_tick:
                self._tick(now, mono)

    def idle(self, now: float) -> None:
        mono = time.monotonic()
        if mono >= self._next_tick:
            with self.lock:
                self._tick(now, mono)

    def _tick(self, now: float, mono: float) -> None:
        self._next_tick = mono + TICK_SECONDS
        self.state.tick(now, mono)
        if self.state.reconciled:
            self._log_reconciled()
        missing = self.state.task_events_missing
        if missing != self._missing_logged:
            self._missing_logged = missing
            if missing:
                log.warning("workers are processing tasks but send no task events: start "
                            "them with -E, set worker_send_task_events=True, or run "
                            "`celery control enable_events`")

    def _log_reconciled(self) -> None:
        for r in self.state.reconciled:
            if r.restarted:
                log.warning("worker %s restarted unseen (its 'processed' count went back): "
                            "reset its buffers (%d prefetched, %d scheduled)", r.worker,
                            r.prefetched, r.scheduled)
            elif r.prefetched or r.scheduled:
                log.warning("after the broker gap, worker %s: reset %d prefetched task(s) "
                            "received before it (their start or end may have been lost)",
                            r.worker, r.prefetched)
            else:
                log.info("after the broker gap, worker %s: buffers consistent", r.worker)
        self.state.reconciled.clear()

    def set_connected(self, connected: bool, now: float) -> None:
        with self.lock:
            if connected and not self.connected:
                if self.disconnected_since is not None:
                    log.warning("broker connection back after %.1fs; events published in "
                                "the gap were not seen", now - self.disconnected_since)
                # Heartbeats could not arrive while we were away: do not call workers dead
                # for our own outage. Task events were lost too: reconcile the buffers.
                mono = time.monotonic()
                if self.disconnected_since is not None:
                    self.state.broker_gap(mono)
                for worker in self.state.workers.values():
                    if worker.up:
                        worker.last_seen = max(worker.last_seen, now)
                        worker.seen = max(worker.seen, mono)
                self.disconnected_since = None
            elif not connected and self.connected:
                self.reconnects += 1
                self.disconnected_since = now
            elif not connected and self.disconnected_since is None:
                self.disconnected_since = now
            self.connected = connected

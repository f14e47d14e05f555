"""Celery's own event consumer, run beside the exporter on the same stream: the reference.

`app.events.Receiver` feeds `celery.events.state.State` in a thread, subscribed the way any
Celery monitor is (same exchange, routing key '#', the transport's own fan-out on Redis), and
reconnects on its own through kombu's ConsumerMixin when the broker goes away. Every event is
recorded as (type, uuid); task names are resolved at read time through State's task table,
because only task-sent and task-received carry `name` (the exporter resolves through its own
table the same way).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from dataclasses import dataclass

from celery import Celery

from tests.integration.harness import Broker

# A task's terminal state is counted once (issue 10 point 7): Celery re-sends buffered events
# after a reconnect, and State keeps one state per task whatever it receives twice.
TERMINAL = frozenset({"task-succeeded", "task-failed", "task-revoked"})
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Snapshot:
    """What the reference has seen so far."""

    events: Counter  # type -> every event received, duplicates included
    tasks: Counter  # (type, task name) -> count, terminal events once per task
    by_worker: Counter  # (type, task name, worker node) -> count, for the workers' events
    alive: frozenset[str]  # State.alive_workers()
    versions: dict[str, str]  # hostname -> sw_ver from its worker events
    duplicates: int  # terminal events seen again for the same task


class Reference:
    def __init__(self, broker: Broker) -> None:
        self.app = Celery("cee_reference", broker=broker.url, set_as_current=False)
        self.app.conf.update(event_exchange=broker.exchange,
                             broker_transport_options=dict(broker.transport_options),
                             broker_connection_retry_on_startup=True)
        self.state = self.app.events.State()
        self._seen: list[tuple[str, str | None, str | None]] = []
        self._lock = threading.Lock()
        self.consuming = threading.Event()
        self.consume_starts = 0
        self._conn = self.app.connection_for_read()
        self.receiver = self.app.events.Receiver(self._conn, handlers={"*": self._on_event})
        # Counted, so a test can wait for the reconnect after a broker restart.
        self.receiver.on_consume_ready = self._on_consume_ready  # type: ignore[method-assign]
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="celery-reference", daemon=True)

    def _run(self) -> None:
        try:
            self.receiver.run()
        except BaseException as exc:  # kept for snapshot(): a dead reference must say why
            self.error = exc

    def _on_consume_ready(self, connection, channel, consumers, **kwargs) -> None:
        with self._lock:
            self.consume_starts += 1
        self.consuming.set()

    def _on_event(self, event: dict) -> None:
        with self._lock:
            self.state.event(event)
            self._seen.append((event["type"], event.get("uuid"), event.get("hostname")))

    def start(self, timeout: float = 30.0) -> Reference:
        self._thread.start()
        if not self.consuming.wait(timeout):
            raise AssertionError(f"the reference Receiver was not consuming within {timeout}s")
        return self

    def wait_consume_starts(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.consume_starts < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"the reference Receiver did not reconnect within "
                                     f"{timeout}s ({self.consume_starts} consume starts)")
            time.sleep(0.1)

    def snapshot(self) -> Snapshot:
        if self.error is not None:
            raise AssertionError(f"the reference consumer died: {self.error!r}")
        with self._lock:
            events: Counter = Counter()
            tasks: Counter = Counter()
            by_worker: Counter = Counter()
            terminal: set[tuple[str, str | None]] = set()
            duplicates = 0
            for kind, uuid, hostname in self._seen:
                events[kind] += 1
                if not kind.startswith("task-"):
                    continue
                if kind in TERMINAL:
                    if (kind, uuid) in terminal:
                        duplicates += 1
                        continue
                    terminal.add((kind, uuid))
                task = self.state.tasks.get(uuid) if uuid else None
                name = (task.name if task is not None else None) or UNKNOWN
                tasks[(kind, name)] += 1
                if kind != "task-sent":  # sent by the producer, not a worker
                    by_worker[(kind, name, hostname)] += 1
            alive = frozenset(w.hostname for w in self.state.alive_workers())
            versions = {w.hostname: w.sw_ver for w in self.state.workers.values()
                        if w.sw_ver}
            return Snapshot(events, tasks, by_worker, alive, versions, duplicates)

    def kinds(self, uuid: str) -> set[str]:
        """Every event type seen for the task `uuid`."""
        with self._lock:
            return {kind for kind, u, _ in self._seen if u == uuid}

    def task_state(self, uuid: str) -> str | None:
        with self._lock:
            task = self.state.tasks.get(uuid)
            return None if task is None else task.state

    def stop(self) -> None:
        self.receiver.should_stop = True
        self._thread.join(15)
        with contextlib.suppress(Exception):  # the broker may be gone at teardown
            self._conn.release()
        self.app.close()

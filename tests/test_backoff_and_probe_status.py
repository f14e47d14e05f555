"""The consumers' reconnect loop and the probes' status gauges, in-process.

The reconnect loop talks to a real closed port (connection refused, as from a broker that
is down); only its waiting is recorded instead of slept, because the backoff is the thing
under test and sleeping 0.5 + 1 + 2 + ... + 30 s for real would take minutes.
"""

from __future__ import annotations

import socket
import threading

import pytest
from prometheus_client import CollectorRegistry

from celery_events_exporter.collector import CeleryCollector
from celery_events_exporter.config import Config
from celery_events_exporter.ingest.base import BACKOFF_MAX, BACKOFF_START, Consumer
from celery_events_exporter.pipeline import Pipeline
from celery_events_exporter.probes import Probe, ProbeResults, ProbeRunner
from celery_events_exporter.state import State


def closed_port() -> int:
    # Bound and never listened on: connecting to it is refused while we hold it.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    CLOSED.append(holder)
    return holder.getsockname()[1]


CLOSED: list[socket.socket] = []


class RecordedStop(threading.Event):
    """`stopping` whose waits are recorded and return at once (see the module docstring)."""

    def __init__(self, stop_after: int) -> None:
        super().__init__()
        self.waits: list[float] = []
        self.stop_after = stop_after

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.waits.append(timeout)
        if len(self.waits) >= self.stop_after:
            self.set()
        return self.is_set()


class RefusedConsumer(Consumer):
    name = "refused"

    def __init__(self, port: int, succeed_on: frozenset[int] = frozenset(),
                 connected_on: frozenset[int] = frozenset()) -> None:
        super().__init__(Config(broker_url=f"redis://127.0.0.1:{port}/0"), Pipeline(State()))
        self.port = port
        self.calls = 0
        self.succeed_on = succeed_on  # attempts that return normally (a clean disconnect)
        self.connected_on = connected_on  # attempts that connect, then lose the connection

    def consume(self) -> None:
        self.calls += 1
        if self.calls in self.succeed_on:
            return
        if self.calls in self.connected_on:
            self.pipeline.set_connected(True, 0.0)
        socket.create_connection(("127.0.0.1", self.port), timeout=2).close()


@pytest.fixture(autouse=True)
def _release_ports():
    yield
    while CLOSED:
        CLOSED.pop().close()


def run(consumer: RefusedConsumer, waits: int) -> list[float]:
    consumer.stopping = RecordedStop(waits)
    consumer.run()
    return consumer.stopping.waits  # type: ignore[attr-defined]


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    consumer = RefusedConsumer(closed_port())
    waits = run(consumer, 10)
    nominal = [min(BACKOFF_START * 2 ** i, BACKOFF_MAX) for i in range(10)]
    assert nominal[-1] == BACKOFF_MAX, "ten failures reach the cap"
    for waited, full in zip(waits, nominal, strict=True):
        # Jitter in [half, whole) of the nominal delay: never the delay itself, so a fleet
        # of exporters does not reconnect in step.
        assert full / 2 <= waited < full, (waits, nominal)
    assert consumer.calls == 10
    assert not consumer.pipeline.connected


def test_backoff_starts_over_after_a_connection_that_worked() -> None:
    consumer = RefusedConsumer(closed_port(), succeed_on=frozenset({4}))
    waits = run(consumer, 4)
    # Failures 1-3 back off 0.5, 1, 2; attempt 4 returns; failure 5 starts at 0.5 again.
    assert consumer.calls == 5
    assert 1.0 <= waits[2] <= 2.0, waits
    assert BACKOFF_START / 2 <= waits[3] <= BACKOFF_START, waits


def test_a_live_connection_that_drops_is_retried_at_once_but_only_once() -> None:
    consumer = RefusedConsumer(closed_port(), connected_on=frozenset({1, 2}))
    waits = run(consumer, 2)
    # Attempt 1 was up and dropped: retried without waiting. Attempt 2 also dropped, but
    # within IMMEDIATE_RETRY_EVERY: it backs off (a flapping broker). Attempt 3 fails.
    assert consumer.calls == 3
    assert BACKOFF_START / 2 <= waits[0] <= BACKOFF_START, waits
    assert consumer.pipeline.reconnects == 2


# -- probe status gauges ------------------------------------------------------------------


class QueueProbe(Probe):
    name = "queues"

    def run(self, results: ProbeResults) -> None:
        with results.lock:
            results.queues.length = {"default": 3.0}


class RefusedProbe(Probe):
    name = "management"

    def __init__(self, port: int) -> None:
        self.port = port

    def run(self, results: ProbeResults) -> None:
        socket.create_connection(("127.0.0.1", self.port), timeout=2).close()


class NeverRun(Probe):
    name = "inspect"


def test_probe_status_is_rendered_per_probe() -> None:
    ticks = iter([10.0, 10.25, 20.0, 20.5, 30.0, 30.75])  # run_once reads the clock twice
    results = ProbeResults()
    good, bad = QueueProbe(), RefusedProbe(closed_port())
    runner = ProbeRunner([good, bad, NeverRun()], results, clock=lambda: next(ticks))
    runner.run_once(good)
    runner.run_once(bad)
    runner.run_once(bad)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(CeleryCollector(Pipeline(State()), results))
    get = registry.get_sample_value
    assert get("celery_exporter_probe_duration_seconds", {"probe": "queues"}) == 0.25
    assert get("celery_exporter_probe_success", {"probe": "queues"}) == 1
    assert get("celery_exporter_probe_errors_total", {"probe": "queues"}) == 0
    assert get("celery_exporter_probe_duration_seconds", {"probe": "management"}) == 0.75
    assert get("celery_exporter_probe_success", {"probe": "management"}) == 0
    assert get("celery_exporter_probe_errors_total", {"probe": "management"}) == 2
    assert "ConnectionRefusedError" in results.status["management"].last_error
    # Registered, never run: its error count exists (0), duration and success do not yet.
    assert get("celery_exporter_probe_errors_total", {"probe": "inspect"}) == 0
    assert get("celery_exporter_probe_success", {"probe": "inspect"}) is None
    assert get("celery_exporter_probe_duration_seconds", {"probe": "inspect"}) is None
    assert get("celery_queue_length", {"queue": "default"}) == 3

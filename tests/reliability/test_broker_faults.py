"""Broker faults with real processes: the broker SIGKILLed mid-stream and restarted on the
same port, and a broker that is not there when the exporter starts.

Each test owns its broker (the session fixtures' brokers are shared and must not die), a
real Celery worker and the exporter as a subprocess. The exporter must stay up, say it is
disconnected, reconnect within seconds of the broker's return, keep its counters
monotonic, and count the events published after the return. Reconnect times are printed.

A stalled broker (TCP up, nothing answers) is produced by a proxy that stops moving bytes:
the probes must fail at their deadline and recover, never freeze.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from celery_events_exporter.collector import CeleryCollector
from celery_events_exporter.pipeline import Pipeline
from celery_events_exporter.probes import Probe, ProbeResults, ProbeRunner
from celery_events_exporter.probes.queues import AmqpQueueProbe
from celery_events_exporter.probes.workers import InspectProbe
from celery_events_exporter.state import State
from tests.support.procs import (
    ExporterProc,
    Producer,
    Samples,
    WorkerProc,
    exporter,
    monotonic_violations,
    pick,
    wait_until,
)
from tests.support.servers import RabbitServer, RedisServer, free_port
from tests.support.stallproxy import StallProxy

# Backoff tops out at 30 s (exporter/ingest/base.py): a reconnect is waited for that long
# plus margin. These are bounds for a hung test, not timing assertions; the measured
# figure is printed.
RECONNECT_BOUND = 45.0
EXPORTER_FLAGS = ("--probe-interval", "2", "--inspect-interval", "5", "--probe-timeout", "2")
PROBE_TIMEOUT = 1.0
HANG_GUARD = 90.0  # far beyond any probe deadline: only a probe that never returns hits it
PROBE_LAST_SUCCESS = "celery_exporter_probe_last_success_timestamp_seconds"


class Recorder:
    """Scrapes the exporter and keeps every scrape, to check counters never go down."""

    def __init__(self, exp: ExporterProc) -> None:
        self.exp = exp
        self.history: list[Samples] = []

    def scrape(self) -> Samples:
        samples = self.exp.samples()
        self.history.append(samples)
        return samples

    def value(self, name: str, **labels: str) -> float:
        return pick(self.scrape(), name, **labels)

    def wait(self, name: str, want: float, timeout: float, **labels: str) -> float:
        started = time.monotonic()
        wait_until(lambda: self.value(name, **labels) == want, timeout, 0.1,
                   what=f"{name}{labels} == {want}")
        return time.monotonic() - started


def _heartbeat_after(rec: Recorder, worker: str, wall: float) -> bool:
    return rec.value("celery_worker_last_heartbeat_timestamp_seconds", worker=worker) > wall


def _run_tasks(rec: Recorder, url: str, n: int, expect_total: float) -> None:
    producer = Producer(url)
    try:
        producer.send(n)
    finally:
        producer.close()
    rec.wait("celery_task_succeeded_total", expect_total, 60)


def _outage_checks(rec: Recorder, exp: ExporterProc, before: Samples) -> None:
    """While the broker is gone: still serving, not ready, counters frozen, not decreased."""
    assert exp.get("/healthz").status_code == 200
    readyz = exp.get("/readyz")
    assert readyz.status_code == 503 and "not connected" in readyz.text
    for _ in range(5):
        now = rec.scrape()
        assert pick(now, "celery_exporter_broker_connected") == 0
        assert (pick(now, "celery_task_succeeded_total")
                == pick(before, "celery_task_succeeded_total"))
        time.sleep(0.3)


def _kill_and_restart(rec: Recorder, exp: ExporterProc,
                      server: RedisServer | RabbitServer) -> tuple[float, float, float]:
    """SIGKILL the broker, check the outage is reported, start it again; returns when it
    came back (monotonic and wall clock) and the exporter's reconnect wait."""
    server.kill()
    before = rec.history[-1]
    rec.wait("celery_exporter_broker_connected", 0, 30)
    _outage_checks(rec, exp, before)
    server.start()
    back = time.monotonic()
    back_wall = time.time()
    return back, back_wall, rec.wait("celery_exporter_broker_connected", 1, RECONNECT_BOUND)


@pytest.mark.redis
@pytest.mark.slow
def test_redis_killed_and_restarted_mid_stream() -> None:
    server = RedisServer(free_port()).start()
    worker = WorkerProc(server.url, "rel-redis@127.0.0.1")
    try:
        with exporter(server.url, *EXPORTER_FLAGS) as exp:
            rec = Recorder(exp)
            worker.start()
            rec.wait("celery_worker_up", 1, 60, worker=worker.name)
            _run_tasks(rec, server.url, 20, 20)
            pid = exp.proc.pid  # type: ignore[union-attr]

            back, back_wall, reconnect = _kill_and_restart(rec, exp, server)
            assert exp.proc.pid == pid and exp.proc.poll() is None  # type: ignore[union-attr]
            assert rec.value("celery_exporter_broker_reconnects_total") >= 1
            # The worker reconnects on its own schedule; then new events must be counted.
            wait_until(lambda: _heartbeat_after(rec, worker.name, back_wall), 60,
                       what="a heartbeat after the restart")
            assert rec.value("celery_worker_up", worker=worker.name) == 1
            worker_back = time.monotonic() - back
            _run_tasks(rec, server.url, 30, 50)
            final = rec.scrape()
            for event in ("sent", "received", "started", "succeeded"):
                assert pick(final, f"celery_task_{event}_total") == 50, event
            assert monotonic_violations(rec.history) == []
            assert "broker connection back after" in exp.log()
            print(f"\nredis SIGKILL + restart: exporter reconnected {reconnect:.1f}s after "
                  f"the broker came back (worker heartbeats {worker_back:.1f}s); 50/50 tasks "
                  f"counted, {len(rec.history)} scrapes monotonic")
    finally:
        worker.kill()
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


@pytest.mark.redis
def test_redis_unreachable_at_start_up() -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = RedisServer(port)
    try:
        with exporter(url, *EXPORTER_FLAGS) as exp:
            rec = Recorder(exp)
            assert rec.value("celery_exporter_broker_connected") == 0
            assert exp.get("/healthz").status_code == 200
            assert exp.get("/readyz").status_code == 503
            wait_until(lambda: "could not open broker connection" in exp.log(), 10,
                       what="the connection failure to be logged")
            time.sleep(2)  # a few failed attempts: the backoff has grown
            server.start()
            reconnect = rec.wait("celery_exporter_broker_connected", 1, RECONNECT_BOUND)
            producer = Producer(url)
            try:
                producer.send(5)
            finally:
                producer.close()
            rec.wait("celery_task_sent_total", 5, 30)
            wait_until(lambda: exp.get("/readyz").status_code == 200, 10,
                       what="/readyz to pass")
            assert monotonic_violations(rec.history) == []
            print(f"\nredis absent at start-up: served /metrics with broker_connected 0; "
                  f"connected {reconnect:.1f}s after the broker appeared")
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


def _rabbitmqctl(server: RabbitServer, *args: str) -> None:
    exe = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    subprocess.run([exe, "-n", server.name, *args], env=server._env(), check=True,
                   capture_output=True, timeout=60)


@pytest.mark.amqp
@pytest.mark.slow
def test_rabbitmq_absent_at_start_then_killed_and_restarted() -> None:
    """One node, two boots (RabbitMQ takes seconds to boot): absent at start-up, then up,
    then SIGKILLed mid-stream and restarted from the same data dir. The broker user has
    its own password, and the exporter's log of the whole run must not contain it."""
    server = RabbitServer(free_port(), free_port())
    password = "rabbit-" + secrets.token_hex(12)
    url = f"amqp://cee:{password}@127.0.0.1:{server.port}//"
    worker = WorkerProc(url, "rel-amqp@127.0.0.1")
    exp = ExporterProc(url, *EXPORTER_FLAGS, "--log-level", "DEBUG")
    try:
        exp.start()
        rec = Recorder(exp)
        assert rec.value("celery_exporter_broker_connected") == 0
        assert exp.get("/readyz").status_code == 503

        server.start()
        up = time.monotonic()
        _rabbitmqctl(server, "add_user", "cee", password)
        _rabbitmqctl(server, "set_permissions", "-p", "/", "cee", ".*", ".*", ".*")
        first = rec.wait("celery_exporter_broker_connected", 1, RECONNECT_BOUND)
        first_total = time.monotonic() - up
        worker.start()
        rec.wait("celery_worker_up", 1, 60, worker=worker.name)
        _run_tasks(rec, url, 20, 20)

        back, back_wall, reconnect = _kill_and_restart(rec, exp, server)
        wait_until(lambda: _heartbeat_after(rec, worker.name, back_wall), 90,
                   what="a heartbeat after the restart")
        worker_back = time.monotonic() - back
        _run_tasks(rec, url, 30, 50)
        final = rec.scrape()
        for event in ("sent", "received", "started", "succeeded"):
            assert pick(final, f"celery_task_{event}_total") == 50, event
        assert pick(final, "celery_exporter_broker_reconnects_total") >= 1
        assert monotonic_violations(rec.history) == []
        log = exp.log()
        assert password not in log
        assert f"cee:***@127.0.0.1:{server.port}" in log
        print(f"\nrabbitmq absent at start: connected {first_total:.1f}s after boot began "
              f"({first:.1f}s after the user existed); SIGKILL + restart: reconnected "
              f"{reconnect:.1f}s after the port reopened (worker {worker_back:.1f}s); "
              f"50/50 tasks counted; password absent from {len(log)} bytes of DEBUG log")
    finally:
        worker.kill()
        exp.stop()
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


def _run_guarded(runner: ProbeRunner, probe: Probe) -> None:
    """run_once in a thread: a probe that hangs fails this test instead of hanging it."""
    thread = threading.Thread(target=runner.run_once, args=(probe,), daemon=True)
    thread.start()
    thread.join(HANG_GUARD)
    assert not thread.is_alive(), f"probe {probe.name} still blocked after {HANG_GUARD:g}s"


def _exposed(pipeline: Pipeline, results: ProbeResults, name: str, probe: str) -> float:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CeleryCollector(pipeline, results))
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("probe") == probe:
                return sample.value
    raise AssertionError(f"{name}{{probe={probe!r}}} is not exposed")


@pytest.mark.amqp
def test_stalled_broker_fails_the_probes_instead_of_freezing_them(amqp_url: str) -> None:
    """TCP up, broker silent (a proxy that stops moving bytes, in front of the real
    RabbitMQ): the queue probe and inspect give up at their deadline, probe_success goes 0,
    the last-success timestamp stops, and both recover once the broker answers again."""
    parts = urlsplit(amqp_url)
    proxy = StallProxy(parts.port or 5672)
    url = urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}"
                                           f"@127.0.0.1:{proxy.port}"))
    pipeline = Pipeline(State())
    results = ProbeResults()
    queues = AmqpQueueProbe(url, {}, lambda: ["celery"], 1, PROBE_TIMEOUT)
    # live_workers None: no worker is running, and none has to answer for a run to pass.
    inspect = InspectProbe(url, {}, pipeline, 1, PROBE_TIMEOUT)
    runner = ProbeRunner([queues, inspect], results)
    try:
        for probe in (queues, inspect):
            _run_guarded(runner, probe)
            assert results.status[probe.name].success, results.status[probe.name]
        good = {p.name: _exposed(pipeline, results, PROBE_LAST_SUCCESS, p.name)
                for p in (queues, inspect)}
        assert all(v > 0 for v in good.values()), good

        proxy.stall()
        for probe in (queues, inspect):
            _run_guarded(runner, probe)
            status = results.status[probe.name]
            assert not status.success, status
            assert "no answer" in status.last_error, status.last_error
            assert _exposed(pipeline, results, "celery_exporter_probe_success", probe.name) == 0
            assert _exposed(pipeline, results, PROBE_LAST_SUCCESS, probe.name) == good[probe.name]
            # Still stalled: the next run is refused at once while the last one is stuck,
            # or fails at its deadline again; either way it is a failure, not a hang.
            _run_guarded(runner, probe)
            assert not results.status[probe.name].success

        proxy.resume()
        for probe in (queues, inspect):
            wait_until(lambda p=probe: (_run_guarded(runner, p),
                                        results.status[p.name].success)[1], 60,
                       interval=0.5, what=f"{probe.name} to succeed again")
            assert _exposed(pipeline, results, PROBE_LAST_SUCCESS, probe.name) > good[probe.name]
    finally:
        proxy.resume()
        runner.stop()
        proxy.close()


class _SilentPeerProbe(Probe):
    """A client with no timeout of its own: a blocking read on a connection whose peer
    never answers (the stalled proxy), as py-amqp waits for a frame when no read timeout
    is set. Stands in for any client call the probes cannot bound themselves."""

    name = "silent_peer"
    timeout = 0.1

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None

    def run(self, results: ProbeResults) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), 5)
        self.sock.settimeout(None)
        self.sock.recv(1)

    def abort(self) -> None:
        if self.sock is not None:
            self.sock.shutdown(socket.SHUT_RDWR)


def test_a_probe_blocked_past_its_deadline_is_failed_and_aborted(redis_url: str) -> None:
    proxy = StallProxy(urlsplit(redis_url).port or 6379)
    proxy.stall()
    probe = _SilentPeerProbe(proxy.port)
    results = ProbeResults()
    runner = ProbeRunner([probe], results)
    try:
        _run_guarded(runner, probe)
        status = results.status[probe.name]
        assert not status.success and "deadline" in status.last_error, status
        assert status.last_success == 0
        # abort() shut the socket: the blocked call ended, so the next run is a new one.
        stuck = runner._stuck.get(probe.name)
        assert stuck is not None
        stuck.join(HANG_GUARD)
        assert not stuck.is_alive()
    finally:
        proxy.close()

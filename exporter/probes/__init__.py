"""Broker probes on their own timer: a scrape only ever reads their cached results.

Every run has a deadline. A broker that keeps the TCP connection up but stops answering
would otherwise block a client call for ever (py-amqp waits for a reply frame without a
timeout), freezing the probe thread with the last result still shown as a success.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celery_events_exporter.beat import PeriodicFacts

log = logging.getLogger(__name__)


@dataclass
class QueueFacts:
    length: dict[str, float] = field(default_factory=dict)
    consumers: dict[str, float] = field(default_factory=dict)
    unacked: dict[str, float] = field(default_factory=dict)
    utilisation: dict[str, float] = field(default_factory=dict)


@dataclass
class ProbeStatus:
    duration: float = 0.0
    success: bool = False
    errors: int = 0
    last_error: str = ""
    last_run: float = 0.0
    last_success: float = 0.0  # wall clock; 0 until the first success


class ProbeResults:
    """Cached probe output, replaced wholesale by each run so a scrape sees one run's view."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queues = QueueFacts()
        self.status: dict[str, ProbeStatus] = {}
        # Per beat schedule entry (beat.BeatProbe); None without a schedule source.
        self.periodic: PeriodicFacts | None = None

    def register(self, name: str) -> None:
        with self.lock:
            self.status.setdefault(name, ProbeStatus())


class Probe:
    name = "probe"
    interval = 15.0
    timeout = 5.0

    @property
    def deadline(self) -> float:
        """Seconds a run may take before it is given up: each client call is bounded by
        `timeout` where the client allows it; this bounds the whole run regardless."""
        return 3 * self.timeout + 5.0

    def run(self, results: ProbeResults) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""

    def abort(self) -> None:
        """Called from another thread when a run overran its deadline: drop connections
        without waiting on the broker, so the blocked call fails and the run ends."""
        self.close()


class DeadlineExceeded(TimeoutError):
    pass


class ProbeRunner:
    def __init__(self, probes: list[Probe], results: ProbeResults,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.probes = probes
        self.results = results
        self.clock = clock
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self._stuck: dict[str, threading.Thread] = {}
        for probe in probes:
            results.register(probe.name)

    def run_once(self, probe: Probe) -> None:
        started = self.clock()
        error = ""
        try:
            self._run_with_deadline(probe)
        except Exception as exc:  # a failing probe is reported, never fatal
            error = _describe(exc, probe)
            log.warning("probe %s failed: %s", probe.name, error)
        duration = self.clock() - started
        with self.results.lock:
            status = self.results.status[probe.name]
            status.duration = duration
            status.success = not error
            status.last_run = time.time()
            if error:
                status.errors += 1
                status.last_error = error
            else:
                status.last_success = status.last_run

    def _run_with_deadline(self, probe: Probe) -> None:
        stuck = self._stuck.get(probe.name)
        if stuck is not None:
            if stuck.is_alive():
                # Never a second thread into a client that is still blocked.
                raise DeadlineExceeded(f"the run started past its deadline "
                                       f"({probe.deadline:g}s) is still blocked on the broker")
            del self._stuck[probe.name]
        failure: list[BaseException] = []

        def target() -> None:
            try:
                probe.run(self.results)
            except BaseException as exc:  # handed to run_once, which reports it
                failure.append(exc)

        thread = threading.Thread(target=target, name=f"probe-{probe.name}", daemon=True)
        thread.start()
        thread.join(probe.deadline)
        if thread.is_alive():
            self._stuck[probe.name] = thread
            try:
                probe.abort()
            except Exception as exc:  # the broker is not answering: dropping is best effort
                log.debug("aborting probe %s: %s", probe.name, exc)
            raise DeadlineExceeded(f"no answer within the {probe.deadline:g}s deadline "
                                   f"(broker reachable but not answering?)")
        if failure:
            raise failure[0]

    def loop(self) -> None:
        due = {probe.name: 0.0 for probe in self.probes}
        while not self.stopping.is_set():
            now = self.clock()
            for probe in self.probes:
                if now >= due[probe.name]:
                    self.run_once(probe)
                    due[probe.name] = self.clock() + probe.interval
            wait = min(due.values(), default=now + 1.0) - self.clock()
            self.stopping.wait(max(0.05, min(wait, 1.0)))

    def start(self) -> None:
        if not self.probes:
            return
        self.thread = threading.Thread(target=self.loop, name="probes", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout)
        for probe in self.probes:
            try:
                probe.close()
            except Exception as exc:  # shutting down: nothing left to report to
                log.debug("closing probe %s: %s", probe.name, exc)


def _describe(exc: BaseException, probe: Probe) -> str:
    text = str(exc)
    if not text and isinstance(exc, TimeoutError):  # socket timeouts come without a message
        text = f"no answer from the broker within {probe.timeout:g}s (--probe-timeout)"
    return f"{type(exc).__name__}: {text}"

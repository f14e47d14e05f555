"""Broker probes on their own timer: a scrape only ever reads their cached results."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

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


class ProbeResults:
    """Cached probe output, replaced wholesale by each run so a scrape sees one run's view."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queues = QueueFacts()
        self.status: dict[str, ProbeStatus] = {}

    def register(self, name: str) -> None:
        with self.lock:
            self.status.setdefault(name, ProbeStatus())


class Probe:
    name = "probe"
    interval = 15.0

    def run(self, results: ProbeResults) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""


class ProbeRunner:
    def __init__(self, probes: list[Probe], results: ProbeResults,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.probes = probes
        self.results = results
        self.clock = clock
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        for probe in probes:
            results.register(probe.name)

    def run_once(self, probe: Probe) -> None:
        started = self.clock()
        error = ""
        try:
            probe.run(self.results)
        except Exception as exc:  # a failing probe is reported, never fatal
            error = f"{type(exc).__name__}: {exc}"
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

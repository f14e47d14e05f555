"""Real processes for reliability tests: the exporter and Celery workers as subprocesses.

Everything binds to 127.0.0.1, every wait is bounded, and every process is stopped by pid.
The exporter's stderr goes to a file so a test can read (and grep) the whole log.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import free_port, listens_on, stop_proc, wait_port_free

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXPORTER = str(BIN / "celery-events-exporter")
CELERY = str(BIN / "celery")

T = TypeVar("T")

Samples = dict[tuple[str, frozenset], float]


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.2,
               what: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy; bounded by time and count."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        with contextlib.suppress(requests.RequestException):
            result = predicate()
            if result:
                return result
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def pick(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples named `name` whose labels include `labels` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


def one(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of the one series `name` with these labels; None when there is none.

    Unlike `pick`, a series that is gone does not read as 0: "up == 0" must mean a series
    saying 0, not a worker whose series were removed.
    """
    want = set(labels.items())
    found = [v for (n, lab), v in samples.items() if n == name and want <= lab]
    assert len(found) <= 1, f"{len(found)} series {name}{labels}: expected one"
    return found[0] if found else None


def series_count(samples: Samples, prefix: str = "celery_") -> int:
    return sum(1 for (n, _) in samples if n.startswith(prefix))


class ExporterProc:
    def __init__(self, broker_url: str | None, *args: str, env: dict[str, str] | None = None,
                 scheme: str = "http", verify: str | bool = False,
                 auth: tuple[str, str] | None = None,
                 cert: tuple[str, str] | None = None) -> None:
        self.port = free_port()
        self.args = [*(["--broker-url", broker_url] if broker_url else []), "--host",
                     "127.0.0.1", "--port", str(self.port), *args]
        self.env = {**os.environ, **(env or {})}
        self.scheme, self.verify, self.auth, self.cert = scheme, verify, auth, cert
        fd, name = tempfile.mkstemp(prefix="cee-exporter-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        self.proc: subprocess.Popen | None = None
        self.final_log: str | None = None
        self.started_once = False

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30, attempts: int = 5) -> ExporterProc:
        """Start and wait for /healthz. When the port turns out taken (another checkout
        drew it too), the first start moves to a new port; a restart waits for its own."""
        for _attempt in range(attempts):
            if self.started_once:
                wait_port_free(self.port)
            offset = self.log_path.stat().st_size
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen([EXPORTER, *self.args], stdout=log, stderr=log,
                                             env=self.env, cwd=ROOT)
            try:
                wait_until(lambda: self._alive() and self._healthy(), timeout,
                           what="the exporter to serve /healthz")
            except AssertionError:
                tail = self.log_path.read_text(errors="replace")[offset:]
                if "Address already in use" not in tail or self.started_once:
                    raise
                self._move(free_port())
                continue
            self.started_once = True
            return self
        raise AssertionError(f"the exporter found no free port in {attempts} attempts")

    def _healthy(self) -> bool:
        # Connection refused while it starts; any other listener answers without our pid.
        try:
            response = self.get("/healthz", timeout=2)
        except requests.ConnectionError:
            return False
        assert self.proc is not None
        return response.status_code in (200, 401) and listens_on(self.proc.pid, self.port)

    def _move(self, port: int) -> None:
        at = self.args.index("--port")
        self.args[at + 1] = str(port)
        self.port = port

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"exporter exited with {self.proc.returncode}:\n{self.log()}")
        return True

    def get(self, path: str, **kwargs: object) -> requests.Response:
        kwargs.setdefault("timeout", 10)
        kwargs.setdefault("verify", self.verify)
        if self.auth is not None:
            kwargs.setdefault("auth", self.auth)
        if self.cert is not None:
            kwargs.setdefault("cert", self.cert)
        return requests.get(self.base + path, **kwargs)  # type: ignore[arg-type]

    def text(self) -> str:
        self._alive()
        r = self.get("/metrics")
        r.raise_for_status()
        return r.text

    def samples(self) -> Samples:
        return parse(self.text())

    def value(self, name: str, **labels: str) -> float:
        return pick(self.samples(), name, **labels)

    def log(self) -> str:
        """Everything the process wrote so far (all of it once stopped)."""
        if self.final_log is not None:
            return self.final_log
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None:
            stop_proc(self.proc)
        if self.final_log is None and self.log_path.exists():
            self.final_log = self.log_path.read_text(errors="replace")
            self.log_path.unlink()

    def rss_mib(self) -> float:
        return self.value("process_resident_memory_bytes") / (1 << 20)


@contextlib.contextmanager
def exporter(broker_url: str | None, *args: str, **kwargs: object) -> Iterator[ExporterProc]:
    proc = ExporterProc(broker_url, *args, **kwargs)  # type: ignore[arg-type]
    try:
        yield proc.start()
    finally:
        proc.stop()


class WorkerProc:
    """`celery worker` from tests.support.celeryapp, threads pool (heartbeats keep flowing
    while tasks run, and SIGKILL takes the whole worker, pool included)."""

    def __init__(self, broker_url: str, name: str, concurrency: int = 2,
                 queues: str = "default", env: dict[str, str] | None = None,
                 prefetch: int = 1) -> None:
        self.name = name
        self.cmd = [CELERY, "-A", "tests.support.celeryapp", "worker", "-P", "threads",
                    "-c", str(concurrency), "-n", name, "-Q", queues, "--without-mingle",
                    "--without-gossip", "-l", "warning"]
        self.env = {**os.environ, "CEE_BROKER_URL": broker_url, "CEE_PREFETCH": str(prefetch),
                    **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProc:
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_proc(self.proc, 20)
            self.proc = None


class Producer:
    """Publishes tasks (with task-sent events) the way a Django web process would."""

    def __init__(self, broker_url: str) -> None:
        from celery import Celery

        self.app = Celery("cee-producer", broker=broker_url, set_as_current=False)
        self.app.conf.update(task_serializer="json", task_send_sent_event=True,
                             broker_connection_retry_on_startup=True,
                             broker_transport_options={"queue_order_strategy": "priority"})

    def send(self, n: int, name: str = "tests.add", args: tuple = (1, 2),
             queue: str = "default", **options: object) -> None:
        with self.app.producer_or_acquire() as producer:
            for _ in range(n):
                self.app.send_task(name, args, queue=queue, producer=producer, **options)

    def close(self) -> None:
        self.app.close()


def monotonic_violations(history: list[Samples]) -> list[str]:
    """Counter samples (`*_total`, `*_count`, `*_sum`, `*_bucket`) that went down."""
    bad = []
    for before, after in itertools.pairwise(history):
        for key, value in before.items():
            name = key[0]
            if not name.startswith("celery_") or not name.endswith(
                    ("_total", "_count", "_sum", "_bucket")):
                continue
            if key in after and after[key] < value and not math.isclose(after[key], value):
                bad.append(f"{name}{dict(key[1])}: {value} -> {after[key]}")
    return bad

"""Helpers shared by the benchmark scripts: paths, private servers, processes, scrapes.

Everything binds to 127.0.0.1; every process started here is stopped by its pid; every
loop is bounded by a count and a deadline.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The side-by-side harness (compare.sh, measure.py, flood.py, ceiling.py, summarize.py),
# kept in the repository; CEE_BENCH_HARNESS points elsewhere for a cross-check by hand.
HARNESS = Path(os.environ.get("CEE_BENCH_HARNESS", REPO / "benchmarks" / "harness"))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.servers import free_port, redis_server, stop_pid  # noqa: E402

__all__ = ["ACCEPT", "HARNESS", "REPO", "Exporter", "exporter_cmd", "free_port", "load",
           "proc_stats", "redis_server", "scrape", "series_count", "started", "stop_pid",
           "sum_metric"]

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)', re.M)
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def exporter_cmd() -> list[str]:
    """Our exporter, from the project's own environment."""
    exe = Path(sys.executable).with_name("celery-events-exporter")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "celery_events_exporter.cli"]


# What each Prometheus sends (see exporter/exposition.py); None: no Accept header (text).
ACCEPT = {
    "text": None,
    "prometheus-2": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "prometheus-3": "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
                    "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;"
                    "version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,"
                    "*/*;q=0.2",
}


def scrape(url: str, timeout: float = 30.0, accept: str | None = None) -> tuple[str, float]:
    """Body and latency in seconds."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    t = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as r:
        body = r.read()
    return body.decode("utf-8", "replace"), time.perf_counter() - t


def sum_metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for m in SAMPLE.finditer(text):
        if m.group(1) != name:
            continue
        if labels:
            got = dict(LABEL.findall(m.group(2) or ""))
            if any(got.get(k) != v for k, v in labels.items()):
                continue
        with contextlib.suppress(ValueError):
            total += float(m.group(3))
    return total


def series_count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and line[0] != "#")


def proc_stats(pid: int) -> dict[str, float] | None:
    """VmRSS / VmHWM in MiB and user+system CPU seconds of a process."""
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0]) / 1024
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        out["user_s"], out["sys_s"] = int(fields[11]) / tick, int(fields[12]) / tick
        out["cpu_s"] = out["user_s"] + out["sys_s"]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return out


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class Exporter:
    """Our exporter as a subprocess on a free port, stopped by pid."""

    def __init__(self, broker: str, *extra: str, log: str | os.PathLike = os.devnull) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.cmd = [*exporter_cmd(), "--broker-url", broker, "--host", "127.0.0.1",
                    "--port", str(self.port), "--probe-interval", "0", "--no-inspect", *extra]
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=REPO,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 60.0, metric: str = "celery_exporter_broker_connected"
                   ) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exporter exited rc={self.proc.returncode}")
            with contextlib.suppress(OSError):
                text, _ = scrape(self.url, 5)
                if sum_metric(text, metric) >= 1:
                    return text
            time.sleep(0.2)
        raise TimeoutError("exporter did not connect in time")

    def stats(self) -> dict[str, float] | None:
        return proc_stats(self.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_pid(self.pid, 10)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        self.log.close()

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def started(*args: object, **kw: object) -> Iterator[Exporter]:
    exp = Exporter(*args, **kw)  # type: ignore[arg-type]
    try:
        yield exp
    finally:
        exp.stop()


def read_while_running(sock: socket.socket, publisher: subprocess.Popen, max_seconds: float,
           read_size: int) -> bytes:
    """Every byte `sock` receives while `publisher` runs (bounded by `max_seconds`): a
    recorded stream to replay offline. `sock` needs a timeout so a quiet socket re-checks
    the publisher; the publisher is killed if it outlives the bound."""
    chunks = []
    deadline = time.monotonic() + max_seconds
    try:
        while time.monotonic() < deadline:
            try:
                data = sock.recv(read_size)
            except TimeoutError:
                if publisher.poll() is not None:
                    break
                continue
            if not data:
                break
            chunks.append(data)
    finally:
        if publisher.poll() is None:
            publisher.kill()
        publisher.wait(10)
    return b"".join(chunks)

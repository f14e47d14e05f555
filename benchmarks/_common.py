"""Helpers shared by the benchmark scripts: paths, private servers, processes, scrapes.

Everything binds to 127.0.0.1; every process started here is stopped by its pid; every
loop is bounded by a count and a deadline.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The shared harness sits beside the repository (../shared/bench), in CI as here.
HARNESS = Path(os.environ.get("CEE_BENCH_HARNESS", REPO.parent / "shared" / "bench"))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.servers import free_port, redis_server, stop_pid  # noqa: E402

__all__ = ["HARNESS", "REPO", "Exporter", "free_port", "load", "proc_stats", "redis_server",
           "scrape", "series_count", "started", "stop_pid", "sum_metric"]

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)', re.M)
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def exporter_cmd() -> list[str]:
    """Our exporter, from the project's own environment."""
    exe = Path(sys.executable).with_name("celery-events-exporter")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "celery_events_exporter.cli"]


def scrape(url: str, timeout: float = 30.0) -> tuple[str, float]:
    """Body and latency in seconds."""
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=timeout) as r:
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

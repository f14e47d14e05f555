"""Helpers for the demo project's tests: worker subprocesses, result polling, queue lengths.

Everything here is bounded in time, binds to 127.0.0.1 and stops what it starts by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
PROJ_DIR = REPO / "proj"
QUEUES = ("priority", "default", "emails", "reports")
# kombu's Redis transport keeps one list per priority step; step 0 is the bare name.
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)

T = TypeVar("T")


def redis_db_url(url: str, db: int) -> str:
    """The same private server on another database, away from the exporter tests' keys."""
    return url.rsplit("/", 1)[0] + f"/{db}"


def queue_keys(name: str) -> list[str]:
    return [name if step == 0 else f"{name}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]


def queue_length(client: Any, name: str) -> int:
    return sum(client.llen(key) for key in queue_keys(name))


def purge_queues(client: Any) -> None:
    keys = [k for q in QUEUES for k in queue_keys(q)] + ["unacked", "unacked_index"]
    client.delete(*keys)


def wait_until(probe: Callable[[], T | None], timeout: float, interval: float = 0.1,
               what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not met within {timeout}s")
        time.sleep(interval)


def wait_for_result(task_id: str, timeout: float = 20.0,
                    states: Iterable[str] = ("SUCCESS", "FAILURE", "REVOKED")) -> Any:
    """Poll django-celery-results' TaskResult until the task reaches one of `states`."""
    from django_celery_results.models import TaskResult

    wanted = set(states)

    def probe() -> Any:
        row = TaskResult.objects.filter(task_id=task_id).first()
        return row if row is not None and row.status in wanted else None

    return wait_until(probe, timeout, what=f"task {task_id} in {sorted(wanted)}")


def result_json(row: Any) -> Any:
    return json.loads(row.result) if row.result else None


@dataclass
class Worker:
    proc: subprocess.Popen
    log_path: Path
    nodename: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float) -> str:
        def probe() -> str | None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n"
                                   f"{self.log()[-3000:]}")
            log = self.log()
            return log if text in log else None

        return wait_until(probe, timeout, interval=0.1, what=f"worker log line {text!r}")


def stop_worker(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Warm shutdown (SIGTERM), then SIGKILL for the worker's own process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    # Pool children exit with their parent; the group kill only catches a straggler, and
    # the group is ours alone (start_new_session=True).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def run_worker(env: dict[str, str], log_path: Path, nodename: str,
               queues: Iterable[str] = QUEUES, concurrency: int = 2, pool: str = "prefork",
               ready_timeout: float = 40.0) -> Iterator[Worker]:
    cmd = [sys.executable, "-m", "celery", "-A", "proj", "worker",
           "-Q", ",".join(queues), "-P", pool, "-c", str(concurrency),
           "--without-gossip", "--without-mingle", "-E", "-n", nodename, "--loglevel", "INFO"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=PROJ_DIR, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    worker = Worker(proc, log_path, nodename)
    try:
        worker.wait_for_log(" ready.", ready_timeout)
        yield worker
    finally:
        stop_worker(proc)


def run_manage(env: dict[str, str], *args: str, timeout: float = 60.0
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=PROJ_DIR, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def run_scenario(env: dict[str, str], timeout: float = 90.0) -> dict[str, Any]:
    """Run tests/demo/scenario.py in a fresh interpreter (its own settings) and parse it."""
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("scenario.py"))],
                          cwd=PROJ_DIR, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"scenario failed ({proc.returncode}):\n{proc.stdout}\n"
                             f"{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])

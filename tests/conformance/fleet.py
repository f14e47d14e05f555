"""Workers of every Celery version under test, each from its own venv (.venv-celery/<version>,
built by scripts/env.sh ensure_worker_venvs from tests/conformance/requirements/)."""

from __future__ import annotations

import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.harness import REPO, Broker, Proc, Procs, node

# Every minor line the suite covers, oldest first; the requirements files pin each exactly.
VERSIONS: tuple[str, ...] = tuple(sorted(
    p.stem.removeprefix("celery-")
    for p in (REPO / "tests/conformance/requirements").glob("celery-*.txt")))


def pinned(version: str) -> str:
    """The exact Celery release the version's requirements file pins (what its workers
    report as sw_ver)."""
    req = REPO / f"tests/conformance/requirements/celery-{version}.txt"
    for line in req.read_text().splitlines():
        if line.startswith("celery=="):
            return line.removeprefix("celery==").strip()
    raise AssertionError(f"{req} pins no celery==")


def celery_bin(version: str) -> Path:
    exe = REPO / ".venv-celery" / version / "bin" / "celery"
    if not exe.exists():
        pytest.fail(f"no Celery {version} worker venv at {exe.parent.parent}: run scripts/test, "
                    "or `source scripts/env.sh && ensure_worker_venvs`")
    return exe


def worker_name(version: str) -> str:
    return "v" + version.replace(".", "")


@dataclass
class VersionWorker:
    """`celery worker` of one Celery version, prefork (revoke(terminate=True) needs a pool
    that can kill a child), one process, prefetch 1, task events on."""

    procs: Procs
    broker: Broker
    version: str
    queues: tuple[str, ...]
    proc: Proc | None = None
    alias: str = ""  # node name instead of v<version>, for a second worker of a version

    @property
    def name(self) -> str:
        return self.alias or worker_name(self.version)

    @property
    def node(self) -> str:
        return node(self.name)

    def start(self) -> VersionWorker:
        argv = [str(celery_bin(self.version)), "-A", "tests.conformance.workerapp", "worker",
                "-Q", ",".join(self.queues), "-c", "1", "-P", "prefork",
                "-n", f"{self.name}@%h", "--without-gossip", "--without-mingle",
                "-l", "warning", "-E"]
        # The worker venv has only Celery: the repo root on the path gives it the task module.
        env = self.broker.worker_env(CEE_PREFETCH="1", PYTHONPATH=str(REPO))
        self.proc = self.procs.spawn(f"worker-{self.name}", argv, env)
        return self

    def warm_stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, the way a deploy stops a worker: running tasks finish, prefetched ones go
        back to the queue, worker-offline is sent."""
        assert self.proc is not None
        self.proc.signal(signal.SIGTERM)
        return self.proc.wait_exit(timeout)


def start_fleet(procs: Procs, broker: Broker,
                layout: Iterable[tuple[str, tuple[str, ...]]]) -> list[VersionWorker]:
    return [VersionWorker(procs, broker, version, queues).start() for version, queues in layout]

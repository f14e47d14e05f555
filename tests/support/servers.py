"""Private broker servers for tests: each test session gets its own Redis and RabbitMQ.

Servers bind to 127.0.0.1 on free ports, live in temporary directories and are stopped
by pid when the session ends, so tests never touch a broker someone else is using.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise TimeoutError(f"port {port} did not open within {timeout}s")


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; ignore a process that is already gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def stop_proc(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen | None = None
    extra_args: tuple[str, ...] = ()
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cee-redis-")))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, 10, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_proc(self.proc)
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None


@contextlib.contextmanager
def redis_server(*extra_args: str, port: int | None = None) -> Iterator[RedisServer]:
    server = RedisServer(port or free_port(), extra_args=extra_args).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


@dataclass
class RabbitServer:
    """A private RabbitMQ node (own name, ports, data dir) started from the system package."""

    port: int
    dist_port: int
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cee-rabbit-")))
    wrapper: subprocess.Popen | None = None
    name: str = ""
    plugins: tuple[str, ...] = ()
    config: str = ""  # rabbitmq.conf (sysctl format) contents

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _env(self) -> dict[str, str]:
        d = self.dir
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "plugins"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(d / "feature_flags"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"),
            "RABBITMQ_PID_FILE": str(d / "pid"),
        }

    def start(self, timeout: float = 60) -> RabbitServer:
        exe = shutil.which("rabbitmq-server") or "/usr/sbin/rabbitmq-server"
        if not os.path.exists(exe):
            raise RuntimeError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
        self.name = self.name or f"cee{self.port}@localhost"
        (self.dir / "log").mkdir(exist_ok=True)
        (self.dir / "mnesia").mkdir(exist_ok=True)
        (self.dir / "plugins").write_text(f"[{','.join(self.plugins)}].\n")
        if self.config:
            (self.dir / "rabbitmq.conf").write_text(self.config)
        if os.geteuid() == 0:
            # Debian's wrapper drops root to the rabbitmq user, which must own the node's files.
            subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(self.dir)], check=False)
        self.wrapper = subprocess.Popen(
            [exe], env=self._env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        wait_for_port(self.port, timeout, self.wrapper)
        return self

    def beam_pid(self) -> int | None:
        try:
            return int((self.dir / "pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        pid = self.beam_pid()
        if pid is not None:
            stop_pid(pid, 20)
        if self.wrapper is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.wrapper.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.wrapper.wait(10)
            self.wrapper = None

    def kill(self) -> None:
        pid = self.beam_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.wrapper is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.wrapper.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.wrapper.wait(10)
            self.wrapper = None
        (self.dir / "pid").unlink(missing_ok=True)


@contextlib.contextmanager
def rabbit_server() -> Iterator[RabbitServer]:
    server = RabbitServer(free_port(), free_port()).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)

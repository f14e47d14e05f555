"""Private broker servers for tests: each test session gets its own Redis and RabbitMQ.

Servers bind to 127.0.0.1 on free ports, live in temporary directories and are stopped
by pid when the session ends, so tests never touch a broker someone else is using.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Ports handed out in this session: never twice, even once the first server is gone.
_HANDED: set[int] = set()
# Not `random`: pytest-randomly seeds it the same way in every session, and sessions of
# several checkouts run side by side on one machine.
_RANDOM = random.SystemRandom()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return low, high


def port_is_free(port: int) -> bool:
    """Nobody listens on it. SO_REUSEADDR as the servers set it: connections of a server
    that just went away linger in TIME_WAIT, and they do not stop its restart."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing listens on, for a server about to bind it.

    Drawn at random below the kernel's ephemeral range: bind(0) and outgoing connections
    take their ports from that range, so a port found there could be handed to someone
    else between this check and the server's own bind. Servers still retry on a new port
    when the bind fails (see `RedisServer.start`), since another checkout may draw it too.
    """
    low, high = _ephemeral_range()
    first, last = (10_000, low - 1) if low > 12_000 else (high + 1, 65_535)
    for _ in range(200):
        port = _RANDOM.randint(first, last)
        if port not in _HANDED and port_is_free(port):
            _HANDED.add(port)
            return port
    with socket.socket() as s:  # a crowded range: fall back to the kernel's choice
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` holds the listening socket of `port` (Linux /proc), so a test
    never mistakes another checkout's server on a reused port for its own."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    if not Path("/proc/net/tcp").exists():
        return True  # no /proc: cannot tell, trust the caller's other checks
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return True
    return False


def wait_port_free(port: int, timeout: float = 30.0) -> None:
    """For a restart on the same port: wait (bounded) until nobody holds it."""
    deadline = time.monotonic() + timeout
    while not port_is_free(port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"port {port} still taken after {timeout}s")
        time.sleep(0.1)


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
    # The caller handed the address out before starting (a URL already given to a client),
    # or the port is in extra_args: then a taken port is waited for, never replaced.
    fixed_port: bool = False
    started_once: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, attempts: int = 5) -> RedisServer:
        """Start on `port`; when it turns out taken, on a new one (the first start only:
        a restart keeps its port, so clients reconnect to the same address)."""
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        in_args = "--port" in self.extra_args or "--tls-port" in self.extra_args
        for _attempt in range(attempts):
            movable = not (self.fixed_port or self.started_once or in_args)
            if not movable:
                wait_port_free(self.port)
            self.proc = subprocess.Popen(
                [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.dir), *self.extra_args],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with contextlib.suppress(RuntimeError):  # it exited: the bind failed
                wait_for_port(self.port, 10, self.proc)
                if listens_on(self.proc.pid, self.port):  # ours, not another checkout's
                    self.started_once = True
                    return self
            stop_proc(self.proc)
            if movable:
                self.port = free_port()
        raise RuntimeError(f"redis-server did not start after {attempts} attempts")

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
    server = RedisServer(port or free_port(), extra_args=extra_args,
                         fixed_port=port is not None).start()
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
    started_once: bool = False

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
        for attempt in range(3):
            if self.started_once:  # a restart: same ports, once the old node let go
                wait_port_free(self.port)
            self.wrapper = subprocess.Popen(
                [exe], env=self._env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
            try:
                wait_for_port(self.port, timeout, self.wrapper)
            except RuntimeError:  # the node stopped before listening: a port was taken
                self.kill()
                if self.started_once or attempt == 2:
                    raise
                # A new node name too: the old one may still be registered with epmd.
                self.port, self.dist_port = free_port(), free_port()
                self.name = f"cee{self.port}@localhost"
                continue
            self.started_once = True
            return self
        raise AssertionError("unreachable")

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

"""Real processes for the integration suite: exporters, Celery workers, a producer.

Every process is started in its own session, logs to a file under the test's tmp dir, and
is killed by process-group id when the test ends. Every wait is bounded by a deadline and
fails with the exporter's metrics and log tails attached, so a red test says what it saw.

A producer publishes task-sent *after* the task message, so a worker that is already
consuming can get its task-received (even task-started) to the exporter first; the
exporter holds such observations until task-sent names the queue (a few seconds at most),
which test_worker_side_labels_survive_late_task_sent pins.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HOSTNAME = socket.gethostname()
QUEUES = ("default", "other", "prio")
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)

# Generous: other suites run on this 2-core machine at the same time.
DEADLINE = 45.0


def node(name: str) -> str:
    """The node name a worker started with `-n name@%h` reports."""
    return f"{name}@{HOSTNAME}"


def redis_queue_keys(queue: str, prefix: str = "") -> list[str]:
    return [prefix + (queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}")
            for step in PRIORITY_STEPS]


# -- metrics -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


class Metrics:
    """One parsed /metrics page."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[Sample] = []
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples.append(Sample(s.name, dict(s.labels), s.value))

    def series(self, metric: str, /, **labels: str) -> list[Sample]:
        """Samples of `metric` whose labels include `labels`."""
        return [s for s in self.samples if s.name == metric
                and all(s.labels.get(k) == v for k, v in labels.items())]

    def get(self, metric: str, /, **labels: str) -> float | None:
        """The sample with exactly these labels, or None."""
        for s in self.samples:
            if s.name == metric and s.labels == labels:
                return s.value
        return None

    def value(self, metric: str, /, default: float = 0.0, **labels: str) -> float:
        v = self.get(metric, **labels)
        return default if v is None else v

    def total(self, metric: str, /, **labels: str) -> float:
        return sum(s.value for s in self.series(metric, **labels))

    def table(self, metric: str, *keys: str) -> dict[tuple[str, ...], float]:
        """{label values in `keys` order: value} for every sample of `metric`."""
        out = {}
        for s in self.series(metric):
            key = tuple(s.labels.get(k, "") for k in keys)
            assert key not in out, f"{metric}: two samples for {key}: labels {s.labels}"
            out[key] = s.value
        return out

    def dump(self, prefix: str = "celery_") -> str:
        lines = [f"{s.name}{s.labels} {s.value:g}" for s in self.samples
                 if s.name.startswith(prefix) and not s.name.endswith(("_bucket", "_sum"))]
        return "\n".join(lines)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# -- processes -----------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int, group: bool = False) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self.pid, sig)  # own session: the group id is our child's pid
            else:
                os.kill(self.pid, sig)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} (pid {self.pid}) did not exit within "
                                 f"{timeout}s\n{tail(self.log)}") from None

    def stop(self) -> None:
        """SIGKILL the process and anything left in its group (pool children)."""
        self.signal(signal.SIGKILL, group=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)


class Procs:
    """Starts processes for one test and kills every one of them at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[Proc] = []
        self._teardown: list[Callable[[], None]] = []

    def on_teardown(self, fn: Callable[[], None]) -> None:
        self._teardown.append(fn)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.tmp / f"{name}.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(log, "ab") as fh:
            popen = subprocess.Popen(argv, cwd=REPO, env=full_env, stdout=fh,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        proc = Proc(name, popen, log)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()
        for fn in reversed(self._teardown):
            with contextlib.suppress(Exception):  # best effort: the brokers may be gone
                fn()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} (pid {p.pid}, rc {p.popen.poll()}) ---\n{tail(p.log)}"
                         for p in self.started)


# -- the broker under test -----------------------------------------------------------------


@dataclass
class Broker:
    kind: str  # "redis" | "amqp"
    url: str
    exchange: str
    transport_options: dict = field(default_factory=dict)

    @property
    def is_redis(self) -> bool:
        return self.kind == "redis"

    def worker_env(self, **extra: str) -> dict[str, str]:
        env = {"CEE_BROKER_URL": self.url, "CEE_EVENTS_EXCHANGE": self.exchange}
        if self.transport_options:
            env["CEE_TRANSPORT_OPTIONS"] = json.dumps(self.transport_options)
        env.update(extra)
        return env

    def exporter_args(self) -> list[str]:
        args = ["--broker-url", self.url, "--events-exchange", self.exchange]
        for key, value in self.transport_options.items():
            text = value if isinstance(value, str) else json.dumps(value)
            args += ["--transport-option", f"{key}={text}"]
        return args

    def redis(self):  # -> redis.Redis
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)

    def reset(self) -> None:
        """Empty this test's queues: FLUSHDB on Redis, purge the task queues on RabbitMQ.

        RabbitMQ queues are purged, not deleted: kombu pools producer connections per
        broker URL for the whole process, and a pooled connection remembers what it has
        declared, so a later test's producer would publish to a deleted queue unroutably.
        """
        if self.is_redis:
            client = self.redis()
            client.flushdb()
            client.close()
            return
        from amqp.exceptions import NotFound
        from kombu import Connection

        with Connection(self.url, connect_timeout=10) as conn:
            for name in QUEUES:
                channel = conn.channel()
                with contextlib.suppress(NotFound):  # never declared: nothing to purge
                    channel.queue_purge(name)
                    channel.close()

    def amqp_queue(self, name: str) -> tuple[int, int] | None:
        """(ready messages, consumers) by passive declare; None when the queue is absent."""
        from amqp.exceptions import NotFound
        from kombu import Connection

        with Connection(self.url, connect_timeout=10) as conn:
            channel = conn.channel()
            try:
                _, messages, consumers = channel.queue_declare(queue=name, passive=True)
            except NotFound:
                return None
            channel.close()
            return messages, consumers


class MultiTap:
    """Counts `task.multi` messages (batched task events) on the events exchange, on the
    side of the exporter, to prove the batch path was exercised."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        if broker.is_redis:
            db = broker.url.rsplit("/", 1)[1]
            self._client = broker.redis()
            self._pubsub = self._client.pubsub()
            self._pubsub.psubscribe(f"/{db}.{broker.exchange}/task.multi")
            return
        from kombu import Connection

        self._queue = f"it-tap-{uuid.uuid4()}"
        self._conn = Connection(broker.url, connect_timeout=10)
        channel = self._conn.channel()
        channel.queue_declare(self._queue, durable=False, auto_delete=False,
                              arguments={"x-expires": 60_000})
        channel.queue_bind(self._queue, broker.exchange, "task.multi")
        channel.close()

    def count(self) -> int:
        if self.broker.is_redis:
            n = 0
            while (msg := self._pubsub.get_message(timeout=0.2)) is not None:
                n += msg["type"] == "pmessage"
            return n
        channel = self._conn.channel()
        _, messages, _ = channel.queue_declare(self._queue, passive=True)
        channel.close()
        return messages

    def close(self) -> None:
        if self.broker.is_redis:
            self._pubsub.close()
            self._client.close()
        else:
            with contextlib.suppress(Exception):
                channel = self._conn.channel()
                channel.queue_delete(self._queue)
            self._conn.release()


class RedisEventTap:
    """Reads the raw event stream of a Redis broker (default transport options)."""

    def __init__(self, broker: Broker) -> None:
        db = broker.url.rsplit("/", 1)[1]
        self._client = broker.redis()
        self._pubsub = self._client.pubsub()
        self._pubsub.psubscribe(f"/{db}.{broker.exchange}/*")

    def wait_for(self, kind: str, task_id: str, timeout: float = DEADLINE) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self._pubsub.get_message(timeout=0.2)
            if msg is None or msg["type"] != "pmessage":
                continue
            envelope = json.loads(msg["data"])
            body = json.loads(base64.b64decode(envelope["body"]))
            for event in body if isinstance(body, list) else [body]:
                if event.get("type") == kind and event.get("uuid") == task_id:
                    return event
        raise AssertionError(f"no {kind} event for {task_id} within {timeout}s")

    def close(self) -> None:
        self._pubsub.close()
        self._client.close()


# -- exporter ------------------------------------------------------------------------------


def exporter_argv() -> list[str]:
    exe = BIN / "celery-events-exporter"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "celery_events_exporter.cli"]


def run_check(procs: Procs, broker: Broker, seconds: float, name: str = "check") -> Proc:
    """`celery-events-exporter check` in the background; read its log when it exits."""
    return procs.spawn(name, [*exporter_argv(), "check", *broker.exporter_args(),
                              "--seconds", str(seconds)])


class Exporter:
    def __init__(self, procs: Procs, broker: Broker, *extra: str, name: str = "exporter",
                 wait_connected: bool = True) -> None:
        self.procs = procs
        self.broker = broker
        self.port = free_port()
        argv = [*exporter_argv(), *broker.exporter_args(), "--host", "127.0.0.1",
                "--port", str(self.port), "--probe-interval", "1", "--inspect-interval", "2",
                "--probe-timeout", "3", *extra]
        self.proc = procs.spawn(name, argv)
        self.base = f"http://127.0.0.1:{self.port}"
        self._wait_healthy()
        if wait_connected:
            self.wait(lambda m: m.value("celery_exporter_broker_connected") == 1,
                      "exporter connected to the broker")

    def _wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise AssertionError(f"exporter exited with {self.proc.popen.returncode}\n"
                                     f"{tail(self.proc.log)}")
            with contextlib.suppress(OSError):
                if http_get(self.base + "/healthz", 1.0)[0] == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"exporter /healthz not up within {timeout}s\n{tail(self.proc.log)}")

    def get(self, path: str) -> tuple[int, str]:
        return http_get(self.base + path)

    def scrape(self) -> Metrics:
        code, text = self.get("/metrics")
        assert code == 200, f"/metrics answered {code}: {text[:500]}"
        return Metrics(text)

    def wait(self, cond: Callable[[Metrics], bool], what: str,
             timeout: float = DEADLINE) -> Metrics:
        """Scrape until `cond` holds; fail with what was seen when the deadline passes."""
        deadline = time.monotonic() + timeout
        while True:
            metrics = self.scrape()
            if cond(metrics):
                return metrics
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.proc.name}: timed out after {timeout}s waiting for: {what}\n"
                    f"--- last scrape ---\n{metrics.dump()}\n{self.procs.logs()}")
            time.sleep(0.25)

    def wait_up(self, *nodes: str, timeout: float = DEADLINE) -> Metrics:
        return self.wait(lambda m: all(m.get("celery_worker_up", worker=n) == 1 for n in nodes),
                         f"celery_worker_up 1 for {nodes}", timeout)


# -- workers -------------------------------------------------------------------------------


class Worker:
    def __init__(self, procs: Procs, broker: Broker, name: str, *,
                 queues: Iterable[str] = QUEUES, concurrency: int = 2, pool: str = "prefork",
                 events: bool = True, prefetch: int = 1, env: dict[str, str] | None = None
                 ) -> None:
        self.node = node(name)
        argv = [str(BIN / "celery"), "-A", "tests.support.celeryapp", "worker",
                "-Q", ",".join(queues), "-c", str(concurrency), "-P", pool,
                "-n", f"{name}@%h", "--without-gossip", "--without-mingle", "-l", "warning"]
        if events:
            argv.append("-E")
        worker_env = broker.worker_env(CEE_PREFETCH=str(prefetch), **(env or {}))
        if not events:
            worker_env["CEE_TASK_EVENTS"] = "0"
        self.proc = procs.spawn(f"worker-{name}", argv, worker_env)

    def terminate(self) -> None:
        """Warm shutdown, the way a deploy stops a worker (sends worker-offline)."""
        self.proc.signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the worker and its pool children at once: no worker-offline."""
        self.proc.signal(signal.SIGKILL, group=True)


# -- producer ------------------------------------------------------------------------------


class Producer:
    """A Celery app configured like tests.support.celeryapp, used only to publish."""

    def __init__(self, broker: Broker) -> None:
        from celery import Celery
        from kombu import Queue

        self.app = Celery("cee_it_producer", broker=broker.url, set_as_current=False)
        self.app.conf.update(
            task_serializer="json", accept_content=["json"], result_backend=None,
            task_ignore_result=True, task_send_sent_event=True,
            event_exchange=broker.exchange, task_default_queue="default",
            task_queues=[Queue("default"), Queue("other"),
                         Queue("prio", queue_arguments={"x-max-priority": 10})],
            task_create_missing_queues=True,
            broker_transport_options={"queue_order_strategy": "priority",
                                      **broker.transport_options},
            broker_connection_retry_on_startup=True,
        )

    def send(self, name: str, *args: object, **options: object) -> str:
        return self.app.send_task(name, args=list(args), **options).id

    def revoke(self, task_id: str) -> None:
        self.app.control.revoke(task_id)

    def close(self) -> None:
        self.app.close()


@contextlib.contextmanager
def producer(broker: Broker) -> Iterator[Producer]:
    p = Producer(broker)
    try:
        yield p
    finally:
        p.close()

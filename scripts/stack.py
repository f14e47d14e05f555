"""The demo stack as local processes: the same services docker-compose.yml runs, no Docker.

    python -m scripts.stack [--duration SECONDS] [--rate TASKS_PER_SECOND] [--broker redis|amqp]

Starts a private broker (redis-server, or a RabbitMQ node), migrates the demo Django
project, runs its web server, two workers, the load generator and the exporter, and, when
installed, Prometheus (with the generated rules) and Alertmanager. Prints where to look
and a live summary; stops everything on Ctrl-C or after --duration. Everything listens
on 127.0.0.1 and lives under .demo/ (or --workdir).

The end-to-end tests drive the same `Stack` class.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from celery_events_exporter.alerts.config import DEFAULT_TASKS, seconds

ROOT = Path(__file__).resolve().parent.parent
PROJ = ROOT / "proj"
BIN = Path(sys.executable).parent

# The demo's rules configuration (the one file `rules --config` and `dashboards --config`
# read): short `for:` and windows so alerts show up within a demo's minutes. The shipped
# rules use the production defaults in alerts/celery-rules.yml.
DEMO_CONFIG: dict[str, object] = {
    # Every exporter job of the demo: "celery" (one exporter, or an HA pair) and
    # "celery-host" (--worker-label host, with --grouped-exporter).
    "job_selector": 'job=~"celery|celery-host"',
    "burn_1h_for": "30s", "burn_6h_for": "1m", "burn_1d_for": "1m", "burn_3d_for": "1m",
    "burn_min_executions": 20, "task_failure_for": "1m", "tasks_dropped_for": "1m",
    "queue_wait_for": "1m", "queue_wait_p95_seconds": 5, "prefetch_backlog_for": "1m",
    "prefetch_wait_p95_seconds": 5, "queue_backlog_for": "1m", "queue_length_threshold": 20,
    "queue_growth_window": "2m", "stuck_window": "1m", "stuck_for": "30s",
    "no_consumers_for": "1m", "worker_down_for": "30s", "worker_down_retention": "10m",
    "no_workers_for": "1m", "events_missing_for": "1m", "exporter_down_for": "1m",
    "exporter_absent_for": "1m", "broker_disconnected_for": "30s", "falling_behind_for": "2m",
    # Incident alerts, for `--scenario` (proj/tasks/loadgen.py SCENARIOS): a slow report runs
    # seconds in the demo, so 20 s is "stuck"; the ghost alert keeps its defaults.
    "running_too_long_for": "15s", "interrupted_for": "10s", "oldest_waiting_seconds": 20,
    "oldest_waiting_for": "15s", "periodic_overdue_for": "10s",
    "tasks": {**DEFAULT_TASKS, "tasks.slow_report": {"max_runtime_seconds": 20}},
}
STUCK_QUEUE = "stuck"
# The demo's summary line scrapes the exporter this often.
SUMMARY_SECONDS = 5.0
# `--scenario` names and the queues they use, as proj/tasks/loadgen.py (SCENARIOS,
# CRASH_QUEUE, UNCONSUMED_QUEUE) has them; the stack cannot import the Django project.
SCENARIOS = ("long", "interrupted", "waiting")
# Scenarios the stack itself produces: `missed` leaves beat down (its entries go overdue).
STACK_SCENARIOS = ("missed",)
# The demo exporter's --beat-grace: beat here is local and on time.
BEAT_GRACE_SECONDS = 30
CRASH_QUEUE = "fragile"
UNCONSUMED_QUEUE = "unconsumed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s ({last})")


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"port {port}: process exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.3):
            return
        time.sleep(0.1)
    raise TimeoutError(f"port {port} did not open within {timeout}s")


def find(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists()
                                      else None)
        if path:
            return path
    return None


@dataclass
class Service:
    name: str
    proc: subprocess.Popen
    log: Path
    url: str = ""
    pid_file: Path | None = None  # a daemon whose real pid is in a file (RabbitMQ's beam)

    def stop(self, timeout: float = 15.0) -> None:
        pids = [self.proc.pid]
        if self.pid_file is not None and self.pid_file.exists():
            with contextlib.suppress(ValueError):
                pids.insert(0, int(self.pid_file.read_text().strip()))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@dataclass
class StackOptions:
    workdir: Path
    broker: str = "redis"
    rate: float = 10.0
    duration: float = 0.0  # 0: until Ctrl-C
    exporter_port: int = 0
    web_port: int = 0
    prometheus: bool = True
    alertmanager: bool = True
    webhook_url: str | None = None  # Alertmanager's receiver; the demo prints alerts itself
    load_seed: int | None = None
    scrape_interval: str = "5s"
    prefetch_multiplier: int = 4
    signing: bool = False  # sign task and control messages (proj's DEMO_SIGNING)
    flower: bool = False  # Flower for task look-ups (docker-compose.yml's `flower` profile)
    stuck_queue: bool = False  # a third worker that never gets to the tasks of one queue
    ha_replica: bool = False  # a second exporter in job "celery": an HA pair
    grouped_exporter: bool = False  # an exporter with --worker-label host, job "celery-host"
    scenarios: tuple[str, ...] = ()  # incidents the load produces (loadgen --scenario)


@dataclass
class Stack:
    options: StackOptions
    services: list[Service] = field(default_factory=list)
    broker_url: str = ""
    exporter_url: str = ""
    extra_exporters: dict[str, list[str]] = field(default_factory=dict)  # job -> urls
    prometheus_url: str = ""
    alertmanager_url: str = ""
    web_url: str = ""
    flower_url: str = ""
    missing: list[str] = field(default_factory=list)
    # Services brought back when they exit, as a supervisor would: name -> how to start it.
    restartable: dict[str, tuple[list[str], dict[str, str], Path]] = field(default_factory=dict)

    # -- process helpers --------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None,
               cwd: Path = ROOT) -> Service:
        log = self.options.workdir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        handle = log.open("ab")
        proc = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **(env or {})}, stdout=handle,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        handle.close()
        service = Service(name, proc, log)
        self.services.append(service)
        return service

    def django_env(self) -> dict[str, str]:
        return {
            "DJANGO_SETTINGS_MODULE": "proj.settings",
            "CELERY_BROKER_URL": self.broker_url,
            "DJANGO_SQLITE_PATH": str(self.options.workdir / "demo.sqlite3"),
            # Long demo runs would keep every email in worker memory with locmem.
            "DJANGO_EMAIL_BACKEND": "django.core.mail.backends.dummy.EmailBackend",
            "PYTHONPATH": str(PROJ),
            "DEMO_SIGNING": "1" if self.options.signing else "0",
            "DEMO_CERTS_DIR": str(self.options.workdir / "certs"),
        }

    # -- services ---------------------------------------------------------------------------

    def start_broker(self) -> None:
        work = self.options.workdir
        if self.options.broker == "amqp":
            exe = find("rabbitmq-server")
            if exe is None:
                raise SystemExit("rabbitmq-server is not installed: apt-get install "
                                 "rabbitmq-server (or use --broker redis)")
            port, dist = free_port(), free_port()
            base = work / "rabbitmq"
            (base / "log").mkdir(parents=True, exist_ok=True)
            (base / "plugins").write_text("[].\n")
            if os.geteuid() == 0:
                subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(base)], check=False)
            env = {"RABBITMQ_NODENAME": f"demo{port}@localhost", "RABBITMQ_NODE_PORT": str(port),
                   "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_DIST_PORT": str(dist),
                   "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
                   "RABBITMQ_LOG_BASE": str(base / "log"),
                   "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "plugins"),
                   "RABBITMQ_FEATURE_FLAGS_FILE": str(base / "feature_flags"),
                   "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
                   "RABBITMQ_PID_FILE": str(base / "pid")}
            service = self._spawn("rabbitmq", [exe], env)
            service.pid_file = base / "pid"
            wait_port(port, 90, service.proc)
            self.broker_url = f"amqp://guest:guest@127.0.0.1:{port}//"
        else:
            exe = find("redis-server")
            if exe is None:
                raise SystemExit("redis-server is not installed: apt-get install redis-server")
            port = free_port()
            service = self._spawn("redis", [exe, "--port", str(port), "--bind", "127.0.0.1",
                                            "--save", "", "--appendonly", "no",
                                            "--dir", str(work)])
            wait_port(port, 20, service.proc)
            self.broker_url = f"redis://127.0.0.1:{port}/0"
        service.url = self.broker_url

    def start_django(self) -> None:
        python = str(BIN / "python")
        env = self.django_env()
        if self.options.signing:
            # With signing on the app refuses to start without its key pair: make it first.
            subprocess.run([python, "manage.py", "democerts"], cwd=PROJ, check=True,
                           env={**os.environ, **env, "DEMO_SIGNING": "0"}, timeout=120,
                           stdout=subprocess.DEVNULL)
        subprocess.run([python, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=PROJ,
                       env={**os.environ, **env}, check=True, timeout=300)
        port = self.options.web_port or free_port()
        web = self._spawn("web", [python, "manage.py", "runserver", f"127.0.0.1:{port}",
                                  "--noreload"], env, cwd=PROJ)
        self.web_url = f"http://127.0.0.1:{port}"
        wait_http(f"{self.web_url}/healthz", 60, web.proc)
        web.url = self.web_url

    def start_workers(self) -> None:
        celery = str(BIN / "celery")
        env = self.django_env()
        # w1 serves the latency-sensitive queues with the production prefetch of 1; w2 has a
        # larger multiplier so slow reports pile up in its buffer: the prefetch backlog the
        # dashboards and alerts are about.
        self._spawn("worker1", [celery, "-A", "proj", "worker", "-n", "w1@%h", "-E",
                                "-Q", "priority,default,emails", "-c", "2", "-l", "warning",
                                "--without-gossip", "--without-mingle"], env, cwd=PROJ)
        self._spawn("worker2", [celery, "-A", "proj", "worker", "-n", "w2@%h", "-E",
                                "-Q", "reports,default", "-c", "1", "-l", "warning",
                                "--without-gossip", "--without-mingle"],
                    {**env, "CELERY_WORKER_PREFETCH_MULTIPLIER":
                     str(self.options.prefetch_multiplier)}, cwd=PROJ)
        if self.options.stuck_queue:
            # One process, one prefetched message: the load's first hour-long task on the
            # stuck queue takes it, and the rest wait in the broker with a live consumer.
            self._spawn("worker3", [celery, "-A", "proj", "worker", "-n", "w3@%h", "-E",
                                    "-Q", STUCK_QUEUE, "-c", "1", "-l", "warning",
                                    "--without-gossip", "--without-mingle"],
                        {**env, "CELERY_WORKER_PREFETCH_MULTIPLIER": "1"}, cwd=PROJ)
        if "interrupted" in self.options.scenarios:
            # The worker the crash task takes down (it consumes nothing else), restarted
            # like a supervisor would: the demo goes on, and the restart's worker-online
            # ends what the dead worker was running if its heartbeats had not timed out yet.
            argv = [celery, "-A", "proj", "worker", "-n", "w4@%h", "-E", "-Q", CRASH_QUEUE,
                    "-c", "1", "-l", "warning", "--without-gossip", "--without-mingle"]
            self._spawn("worker4", argv, env, cwd=PROJ)
            self.restartable["worker4"] = (argv, env, PROJ)
        if "missed" in self.options.scenarios:
            # Beat is down (a crash loop, a deploy that dropped it): nothing sends the
            # schedule, and each entry goes overdue one interval + grace after the exporter
            # first read it.
            print("scenario missed: beat is not started", flush=True)
        else:
            self.start_beat()

    def start_beat(self) -> None:
        # The project's CELERY_BEAT_SCHEDULE; the schedule file (last runs) lives in the
        # workdir, so a restarted demo keeps its entries' history.
        self._spawn("beat", [str(BIN / "celery"), "-A", "proj", "beat", "-l", "warning",
                             "-s", str(self.options.workdir / "celerybeat-schedule")],
                    self.django_env(), cwd=PROJ)

    def restart_exited(self) -> list[str]:
        """Start again the restartable services that exited; their names."""
        restarted = []
        for service in [s for s in self.services if s.name in self.restartable]:
            if service.proc.poll() is None:
                continue
            # A killed worker's pool children may outlive it in its process group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(service.proc.pid, signal.SIGKILL)
            self.services.remove(service)
            argv, env, cwd = self.restartable[service.name]
            self._spawn(service.name, argv, env, cwd)
            restarted.append(f"{service.name} (exit {service.proc.returncode})")
        return restarted

    def start_load(self) -> None:
        duration = self.options.duration or 24 * 3600
        argv = [str(BIN / "python"), "manage.py", "loadgen", "--rate", str(self.options.rate),
                "--duration", str(duration)]
        if self.options.load_seed is not None:
            argv += ["--seed", str(self.options.load_seed)]
        if self.options.stuck_queue:
            argv += ["--stuck-queue", STUCK_QUEUE]
        load_scenarios = [n for n in self.options.scenarios if n in SCENARIOS]
        if load_scenarios:
            argv += ["--scenario", ",".join(load_scenarios)]
        self._spawn("load", argv, self.django_env(), cwd=PROJ)

    def _exporter(self, name: str, port: int, *extra: str) -> str:
        queues = ["default", "emails", "reports", "priority"]
        if self.options.stuck_queue:
            queues.append(STUCK_QUEUE)
        if "interrupted" in self.options.scenarios:
            queues.append(CRASH_QUEUE)
        if "waiting" in self.options.scenarios:
            queues.append(UNCONSUMED_QUEUE)
        exporter = self._spawn(name, [
            str(BIN / "celery-events-exporter"), "--broker-url", self.broker_url,
            "--host", "127.0.0.1", "--port", str(port), "--probe-interval", "5",
            "--inspect-interval", "10", *(a for q in queues for a in ("--queue", q)),
            # The demo's beat schedule: per-entry last/next run and overdue.
            "--beat-schedule", "proj.settings", "--beat-grace", str(BEAT_GRACE_SECONDS),
            # Prometheus and the demo's own summary line (every 5 s) both scrape: each must
            # see a new series at 0, or its first increment (the first interrupted task, a
            # queue's first start) is invisible to increase() in Prometheus.
            "--new-series-delay", f"{max(SUMMARY_SECONDS, self._scrape_seconds()):g}",
            # Signing workers refuse unsigned control messages: no inspect broadcast.
            *(["--no-inspect"] if self.options.signing else []), *extra],
            # proj.settings imports without Django (the exporter has none): only its path.
            {"PYTHONPATH": str(PROJ)})
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", 30, exporter.proc)
        exporter.url = f"{url}/metrics"
        return url

    def start_exporter(self) -> None:
        self.exporter_url = self._exporter("exporter", self.options.exporter_port or free_port())
        self.extra_exporters = {"celery": [self.exporter_url]}
        if self.options.ha_replica:
            self.extra_exporters["celery"].append(self._exporter("exporter-replica",
                                                                 free_port()))
        if self.options.grouped_exporter:
            self.extra_exporters["celery-host"] = [
                self._exporter("exporter-host", free_port(), "--worker-label", "host")]

    def write_config(self) -> Path:
        path = self.options.workdir / "monitoring.yml"
        path.write_text(json.dumps(DEMO_CONFIG, indent=2) + "\n")  # JSON is YAML
        return path

    def write_rules(self) -> Path:
        out = self.options.workdir / "rules"
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(BIN / "celery-events-exporter"), "rules", "--out", str(out),
                        "--config", str(self.write_config())], check=True,
                       timeout=60, capture_output=True)
        return out

    def start_alertmanager(self) -> None:
        exe = find("prometheus-alertmanager", "alertmanager")
        if exe is None:
            self.missing.append("prometheus-alertmanager")
            return
        work = self.options.workdir / "alertmanager"
        work.mkdir(parents=True, exist_ok=True)
        receiver: dict = {"name": "demo"}
        if self.options.webhook_url:
            receiver["webhook_configs"] = [{"url": self.options.webhook_url,
                                            "send_resolved": True}]
        config = {"route": {"receiver": "demo", "group_by": ["alertname", "queue", "worker"],
                            "group_wait": "5s", "group_interval": "10s",
                            "repeat_interval": "1h"},
                  "receivers": [receiver]}
        (work / "alertmanager.yml").write_text(json.dumps(config, indent=2))
        port = free_port()
        service = self._spawn("alertmanager", [
            exe, f"--config.file={work / 'alertmanager.yml'}", f"--storage.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="])
        self.alertmanager_url = f"http://127.0.0.1:{port}"
        wait_http(f"{self.alertmanager_url}/-/ready", 30, service.proc)
        service.url = self.alertmanager_url

    def start_prometheus(self) -> None:
        exe = find("prometheus")
        if exe is None:
            self.missing.append("prometheus")
            return
        rules = self.write_rules()
        work = self.options.workdir / "prometheus"
        work.mkdir(parents=True, exist_ok=True)
        interval = self.options.scrape_interval
        jobs = self.extra_exporters or {"celery": [self.exporter_url]}
        config: dict = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(p) for p in sorted(rules.glob("*.yml"))],
            "scrape_configs": [
                {"job_name": job, "static_configs": [
                    {"targets": [u.removeprefix("http://") for u in urls]}]}
                for job, urls in jobs.items()],
        }
        if self.alertmanager_url:
            config["alerting"] = {"alertmanagers": [{"static_configs": [
                {"targets": [self.alertmanager_url.removeprefix("http://")]}]}]}
        (work / "prometheus.yml").write_text(json.dumps(config, indent=2))
        port = free_port()
        service = self._spawn("prometheus", [
            exe, f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
            "--enable-feature=exemplar-storage"])
        self.prometheus_url = f"http://127.0.0.1:{port}"
        wait_http(f"{self.prometheus_url}/-/ready", 60, service.proc)
        service.url = self.prometheus_url

    def start_flower(self) -> None:
        # As docker-compose.yml's flower service: configured from the environment (broker,
        # FLOWER_BASIC_AUTH), so no credential is in the process list.
        port = free_port()
        user = os.environ.get("FLOWER_USER", "admin")
        password = os.environ.get("FLOWER_PASSWORD", "admin")
        flower = self._spawn("flower", [str(BIN / "celery"), "-A", "proj", "flower"], {
            **self.django_env(), "FLOWER_ADDRESS": "127.0.0.1", "FLOWER_PORT": str(port),
            "FLOWER_BASIC_AUTH": f"{user}:{password}"}, cwd=PROJ)
        self.flower_url = f"http://127.0.0.1:{port}"
        wait_http(f"{self.flower_url}/healthcheck", 60, flower.proc)
        flower.url = self.flower_url

    def _scrape_seconds(self) -> float:
        return seconds(self.options.scrape_interval)

    def start(self) -> Stack:
        self.options.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_broker()
            self.start_django()
            self.start_workers()
            self.start_exporter()
            if self.options.alertmanager and self.options.prometheus:
                self.start_alertmanager()
            if self.options.prometheus:
                self.start_prometheus()
            if self.options.flower:
                self.start_flower()
            self.start_load()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        # Load and producers first, the broker last, so nothing logs a lost broker.
        for service in reversed(self.services):
            service.stop()
        self.services.clear()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def dead(self) -> list[str]:
        return [s.name for s in self.services if s.proc.poll() is not None and s.name != "load"]

    # -- reading it back ----------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        """Sums of each sample name (labels dropped) from the exporter's /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"{self.exporter_url}/metrics", timeout=5) as response:
            text = response.read().decode()
        sums: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    continue
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
        return sums

    def query(self, expr: str) -> list[dict]:
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"query {expr!r} failed: {body}")
        return body["data"]["result"]

    def alerts(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.prometheus_url}/api/v1/alerts", timeout=10) as r:
            return json.load(r)["data"]["alerts"]


def summary_line(metrics: dict[str, float], previous: dict[str, float], seconds: float,
                 firing: list[str]) -> str:
    def rate(name: str) -> float:
        return (metrics.get(name, 0.0) - previous.get(name, 0.0)) / max(seconds, 1e-9)

    return (f"sent {rate('celery_task_sent_total'):5.1f}/s  "
            f"ok {rate('celery_task_succeeded_total'):5.1f}/s  "
            f"failed {rate('celery_task_failed_total'):4.1f}/s  "
            f"retried {rate('celery_task_retried_total'):4.1f}/s | "
            f"queued {metrics.get('celery_queue_length', 0):4.0f}  "
            f"prefetched {metrics.get('celery_worker_tasks_prefetched', 0):3.0f}  "
            f"scheduled {metrics.get('celery_worker_tasks_scheduled', 0):3.0f}  "
            f"workers up {metrics.get('celery_worker_up', 0):.0f} | "
            f"alerts: {', '.join(firing) or 'none firing'}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=0,
                   help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--rate", type=float, default=10.0, help="tasks per second from the load")
    p.add_argument("--broker", choices=("redis", "amqp"), default="redis")
    p.add_argument("--exporter-port", type=int, default=9540)
    p.add_argument("--workdir", type=Path, default=ROOT / ".demo")
    p.add_argument("--no-prometheus", action="store_true",
                   help="skip Prometheus and Alertmanager")
    p.add_argument("--webhook-url", help="send Alertmanager's notifications to this webhook")
    p.add_argument("--scrape-interval", default="5s", help="Prometheus scrape/eval interval")
    p.add_argument("--seed", type=int, help="seed of the load generator, for a repeatable mix")
    p.add_argument("--signing", action="store_true",
                   help="sign task and control messages with throw-away certificates "
                        "(the exporter reads the unsigned JSON events all the same)")
    p.add_argument("--flower", action="store_true",
                   help="also run Flower to look tasks up by id (basic auth FLOWER_USER / "
                        "FLOWER_PASSWORD, default admin / admin)")
    p.add_argument("--stuck-queue", action="store_true",
                   help=f"a third worker on queue '{STUCK_QUEUE}' that the load keeps busy "
                        f"with hour-long tasks: messages wait, a consumer is there, nothing "
                        f"starts (CeleryQueueStuck fires)")
    p.add_argument("--ha-replica", action="store_true",
                   help="run a second exporter in job 'celery': an HA pair Prometheus "
                        "scrapes both of")
    p.add_argument("--grouped-exporter", action="store_true",
                   help="also run an exporter with --worker-label host, as job 'celery-host'")
    p.add_argument("--scenario", action="append", default=[], metavar="NAME[,NAME]",
                   help=f"incidents the load produces at its start (repeatable, or a comma "
                        f"list): {', '.join(SCENARIOS + STACK_SCENARIOS)}; 'interrupted' "
                        f"adds worker w4 on queue '{CRASH_QUEUE}', which the crash kills and "
                        f"the demo restarts; 'missed' runs no beat. See docs/demo.md "
                        f"'Incident scenarios'")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.duration < 0 or args.rate <= 0:
        build_parser().error("--duration must be >= 0 and --rate > 0")
    scenarios = tuple(dict.fromkeys(n.strip() for v in args.scenario for n in v.split(",")
                                    if n.strip()))
    unknown = [n for n in scenarios if n not in SCENARIOS + STACK_SCENARIOS]
    if unknown:
        build_parser().error(f"unknown --scenario {', '.join(unknown)} "
                             f"(choose from {', '.join(SCENARIOS + STACK_SCENARIOS)})")
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    options = StackOptions(workdir=args.workdir, broker=args.broker, rate=args.rate,
                           duration=args.duration, exporter_port=args.exporter_port,
                           prometheus=not args.no_prometheus, webhook_url=args.webhook_url,
                           scrape_interval=args.scrape_interval, load_seed=args.seed,
                           signing=args.signing, flower=args.flower, stuck_queue=args.stuck_queue,
                           ha_replica=args.ha_replica, grouped_exporter=args.grouped_exporter,
                           scenarios=scenarios)
    stack = Stack(options)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print("starting the demo stack (logs in %s) ..." % (args.workdir / "logs"), flush=True)
    with stack:
        print(f"  broker        {stack.broker_url}")
        if options.signing:
            print(f"  signing       task messages signed, certificates in {args.workdir / 'certs'}")
        print(f"  django web    {stack.web_url}/signup/ (POST)")
        print(f"  exporter      {stack.exporter_url}/metrics")
        for job, urls in stack.extra_exporters.items():
            for url in urls:
                if url != stack.exporter_url:
                    print(f"  exporter ({job})  {url}/metrics")
        if stack.prometheus_url:
            print(f"  prometheus    {stack.prometheus_url}/alerts")
        if stack.alertmanager_url:
            print(f"  alertmanager  {stack.alertmanager_url}")
        if stack.flower_url:
            print(f"  flower        {stack.flower_url}/tasks")
        if options.scenarios:
            print(f"  scenarios     {', '.join(options.scenarios)} (alerts: docs/demo.md, "
                  f"'Incident scenarios')")
        for name in stack.missing:
            print(f"  ({name} is not installed: apt-get install {name} to see rules and alerts)")
        print("Grafana is not started here; `docker compose up` brings it with the dashboards."
              "\nCtrl-C stops everything.", flush=True)
        deadline = time.monotonic() + (args.duration or float("inf"))
        previous: dict[str, float] = {}
        last = time.monotonic()
        while not stopping and time.monotonic() < deadline:
            time.sleep(min(SUMMARY_SECONDS, max(0.1, deadline - time.monotonic())))
            for name in stack.restart_exited():
                print(f"restarted {name}", flush=True)
            dead = stack.dead()
            if dead:
                print(f"stopping: {', '.join(dead)} exited; see {args.workdir / 'logs'}")
                break
            try:
                metrics = stack.metrics()
                firing = sorted({a["labels"]["alertname"] for a in stack.alerts()
                                 if a["state"] == "firing"}) if stack.prometheus_url else []
            except OSError as exc:
                print(f"(exporter not answering: {exc})")
                continue
            now = time.monotonic()
            if previous:
                print(summary_line(metrics, previous, now - last, firing), flush=True)
            previous, last = metrics, now
        print("stopping ...", flush=True)
    print("stopped.")
    return 0


@contextlib.contextmanager
def temporary_stack(**kwargs: object) -> Iterator[Stack]:
    """A stack in a temporary directory, for tests."""
    workdir = Path(tempfile.mkdtemp(prefix="cee-stack-"))
    try:
        with Stack(StackOptions(workdir=workdir, **kwargs)) as stack:  # type: ignore[arg-type]
            yield stack
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

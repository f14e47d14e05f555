"""Command line: argument parsing only. Everything is validated into a `Config`.

Every flag can also be set by an environment variable: `--broker-url` is
`CELERY_EVENTS_EXPORTER_BROKER_URL`, and so on (flags win over the environment).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from celery_events_exporter import __version__
from celery_events_exporter import metrics as m
from celery_events_exporter.brokerargs import (
    ENV_PREFIX,
    add_broker_args,
    env,
    env_bool,
    env_list,
    resolve_broker,
    setup_logging,
)
from celery_events_exporter.config import (
    DEFAULT_PORT,
    Config,
    ConfigError,
    check_prefix,
    parse_buckets,
    parse_label_pairs,
    worker_label_policy,
)
from celery_events_exporter.state import StateConfig
from celery_events_exporter.webgate import Limits

__all__ = ["ENV_PREFIX", "build_parser", "config_from_args", "main"]
SUBCOMMANDS = ("run", "check", "dashboards", "rules")
log = logging.getLogger("celery_events_exporter")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="celery-events-exporter",
        description="Prometheus exporter for Celery, fed by the Celery event stream.",
        epilog="Subcommands: check (diagnose a broker), dashboards (Grafana JSON), "
               "rules (Prometheus rules). Every flag has an environment variable: "
               "--broker-url is CELERY_EVENTS_EXPORTER_BROKER_URL.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_broker_args(p)
    g = p.add_argument_group("web")
    g.add_argument("--host", default=env("--host", "0.0.0.0"), help="listen address")
    g.add_argument("--port", type=int, default=int(env("--port", DEFAULT_PORT)),  # type: ignore[arg-type]
                   help=f"listen port (default {DEFAULT_PORT})")
    g.add_argument("--web-config-file", default=env("--web-config-file"),
                   help="exporter-toolkit style YAML with tls_server_config and basic_auth_users")
    g.add_argument("--protect-health", action="store_true",
                   default=env_bool("--protect-health", False),
                   help="require basic auth on /healthz and /readyz too")
    g.add_argument("--web-header-timeout", type=float,
                   default=float(env("--web-header-timeout", 5.0)),  # type: ignore[arg-type]
                   help="seconds a connection gets for its TLS handshake and request head "
                        "(slow clients are closed after that; default 5)")
    g.add_argument("--web-max-connections", type=int,
                   default=int(env("--web-max-connections", 1024)),  # type: ignore[arg-type]
                   help="connections still sending their request; one more closes the oldest "
                        "(default 1024, capped to half the open-files limit)")
    g = p.add_argument_group("metrics")
    g.add_argument("--prefix", default=env("--prefix", m.DEFAULT_PREFIX),
                   help="metric name prefix (default celery)")
    g.add_argument("--label", action="append", metavar="NAME=VALUE",
                   default=env_list("--label"), help="static label on every metric")
    g.add_argument("--worker-label", default=env("--worker-label", "full"),
                   help="worker label on task metrics: full (node name), host (part after @), "
                        "regex (first group of --worker-label-regex), none")
    g.add_argument("--worker-label-regex", default=env("--worker-label-regex"))
    g.add_argument("--include-task", action="append", metavar="GLOB",
                   default=env_list("--include-task"),
                   help="only export task metrics for task names matching (repeatable)")
    g.add_argument("--exclude-task", action="append", metavar="GLOB",
                   default=env_list("--exclude-task"),
                   help="drop task metrics for task names matching (repeatable)")
    g.add_argument("--max-series", type=int, default=int(env("--max-series", 10_000)),  # type: ignore[arg-type]
                   help="series cap per metric; observations past it are counted and dropped")
    g.add_argument("--max-label-length", type=int,
                   default=int(env("--max-label-length", 128)))  # type: ignore[arg-type]
    for metric, flag in ((m.QUEUE_WAIT, "--queue-wait-buckets"),
                         (m.PREFETCH_WAIT, "--prefetch-wait-buckets"),
                         (m.RUNTIME, "--runtime-buckets")):
        g.add_argument(flag, default=env(flag),
                       help=f"comma-separated bucket bounds in seconds for {metric.full()} "
                            f"(default {','.join(f'{b:g}' for b in metric.buckets or ())})")
    g = p.add_argument_group("tracking")
    g.add_argument("--worker-timeout", type=float,
                   default=float(env("--worker-timeout", 0)),  # type: ignore[arg-type]
                   help="seconds without heartbeats before a worker is down (default 0: "
                        "Celery's rule, twice the worker's heartbeat interval)")
    g.add_argument("--worker-down-retention", type=float,
                   default=float(env("--worker-down-retention", 600)),  # type: ignore[arg-type]
                   help="seconds a down worker's series stay (at up 0) before removal")
    g.add_argument("--max-tasks", type=int, default=int(env("--max-tasks", 100_000)),  # type: ignore[arg-type]
                   help="cap of the in-flight task table")
    g.add_argument("--task-ttl", type=float, default=float(env("--task-ttl", 3600)),  # type: ignore[arg-type]
                   help="seconds an in-flight task without events is kept")
    g.add_argument("--new-series-delay", type=float,
                   default=float(env("--new-series-delay", 0)),  # type: ignore[arg-type]
                   help="seconds a new task series is shown at 0 (at least one scrape), so "
                        "rate() sees its first increment; with several Prometheus servers "
                        "scraping (an HA pair), set it to the scrape interval")
    g.add_argument("--max-message-bytes", type=int,
                   default=int(env("--max-message-bytes", 1 << 20)))  # type: ignore[arg-type]
    g.add_argument("--ingest", choices=("auto", "redis", "kombu"),
                   default=env("--ingest", "auto"),
                   help="event consumer: auto (Redis fast path for Redis URLs), redis, kombu")
    g = p.add_argument_group("probes")
    g.add_argument("--queue", action="append", metavar="NAME", default=env_list("--queue"),
                   help="queue to measure even before any event names it (repeatable)")
    g.add_argument("--probe-interval", type=float,
                   default=float(env("--probe-interval", 15)),  # type: ignore[arg-type]
                   help="seconds between queue probes (0 disables)")
    g.add_argument("--probe-timeout", type=float,
                   default=float(env("--probe-timeout", 5)))  # type: ignore[arg-type]
    g.add_argument("--no-inspect", action="store_true", default=env_bool("--no-inspect", False),
                   help="do not broadcast `inspect` for pool size, prefetch limit and queues "
                        "(workers that only accept signed messages refuse it)")
    g.add_argument("--inspect-interval", type=float,
                   default=float(env("--inspect-interval", 60)))  # type: ignore[arg-type]
    g.add_argument("--rabbitmq-management-url", default=env("--rabbitmq-management-url"),
                   help="e.g. https://user:pass@rabbit:15672 for unacked counts and "
                        "consumer utilisation")
    g.add_argument("--rabbitmq-management-ca", default=env("--rabbitmq-management-ca"),
                   help="CA bundle to verify the management API's certificate")
    g = p.add_argument_group("periodic tasks (celery beat)")
    g.add_argument("--beat-schedule", default=env("--beat-schedule"), metavar="MODULE[:ATTR]",
                   help="read beat schedule entries from this module's dict (default ATTR: "
                        "CELERY_BEAT_SCHEDULE, else beat_schedule; the timezone from "
                        "CELERY_TIMEZONE / timezone beside it) or Celery app (its "
                        "conf.beat_schedule), e.g. proj.settings: a Django settings module "
                        "imports without Django")
    g.add_argument("--beat-database-url", default=env("--beat-database-url"),
                   help="also read django-celery-beat's tables, read-only, with plain SQL: "
                        "sqlite:////path/db.sqlite3 or postgresql://user@host/db (needs "
                        "psycopg); set it in the environment to keep a password out of `ps`")
    g.add_argument("--beat-grace", type=float,
                   default=float(env("--beat-grace", 60)),  # type: ignore[arg-type]
                   help="seconds past an entry's next run before it counts as overdue "
                        "(default 60)")
    g.add_argument("--beat-max-entries", type=int,
                   default=int(env("--beat-max-entries", 1000)),  # type: ignore[arg-type]
                   help="cap of schedule entries exported; the rest are counted in "
                        "celery_exporter_periodic_entries_skipped{reason=\"over_cap\"}")
    p.add_argument("--log-level", default=env("--log-level", "INFO"),
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    url, options, exchange = resolve_broker(args)
    check_prefix(args.prefix)
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port: {args.port} is not a TCP port")
    for flag, value in (("--max-series", args.max_series), ("--max-tasks", args.max_tasks),
                        ("--max-message-bytes", args.max_message_bytes)):
        if value < 1:
            raise ConfigError(f"{flag}: must be at least 1")
    for flag, value in (("--worker-timeout", args.worker_timeout),
                        ("--worker-down-retention", args.worker_down_retention),
                        ("--task-ttl", args.task_ttl), ("--probe-interval", args.probe_interval),
                        ("--new-series-delay", args.new_series_delay),
                        ("--inspect-interval", args.inspect_interval)):
        if value < 0 or value != value:
            raise ConfigError(f"{flag}: must be a non-negative number of seconds")
    if args.probe_timeout <= 0:
        raise ConfigError("--probe-timeout: must be positive")
    beat_sources = _beat_sources(args)
    buckets = {}
    for metric, flag, value in ((m.QUEUE_WAIT, "--queue-wait-buckets", args.queue_wait_buckets),
                                (m.PREFETCH_WAIT, "--prefetch-wait-buckets",
                                 args.prefetch_wait_buckets),
                                (m.RUNTIME, "--runtime-buckets", args.runtime_buckets)):
        if value:
            buckets[metric.key] = parse_buckets(value, flag)
    labels = worker_label_policy(args.worker_label, args.worker_label_regex,
                                 args.max_label_length, tuple(args.include_task),
                                 tuple(args.exclude_task))
    static = parse_label_pairs(args.label, "--label")
    return Config(
        broker_url=url, transport_options=options, events_exchange=exchange,
        host=args.host, port=args.port, prefix=args.prefix,
        state=StateConfig(max_tasks=args.max_tasks, task_ttl=args.task_ttl,
                          worker_timeout=args.worker_timeout,
                          worker_down_retention=args.worker_down_retention,
                          max_series=args.max_series, labels=labels, buckets=buckets,
                          new_series_delay=args.new_series_delay),
        static_labels=static, queues=tuple(args.queue), probe_interval=args.probe_interval,
        probe_timeout=args.probe_timeout, inspect=not args.no_inspect,
        inspect_interval=args.inspect_interval,
        rabbitmq_management_url=args.rabbitmq_management_url,
        rabbitmq_management_ca=args.rabbitmq_management_ca,
        web_config_file=args.web_config_file, max_message_bytes=args.max_message_bytes,
        ingest=args.ingest, log_level=args.log_level, beat_sources=beat_sources,
        beat_grace=args.beat_grace, beat_max_entries=args.beat_max_entries)


def _beat_sources(args: argparse.Namespace) -> tuple[object, ...]:
    """The schedule sources the flags name, each checked now (a module imported, a
    database driver present), so a bad flag stops the exporter at start."""
    if not args.beat_schedule and not args.beat_database_url:
        return ()
    if not args.beat_grace >= 0 or args.beat_grace == float("inf"):
        raise ConfigError("--beat-grace: must be a non-negative number of seconds")
    if args.beat_max_entries < 1:
        raise ConfigError("--beat-max-entries: must be at least 1")
    if args.probe_interval <= 0:
        raise ConfigError("--beat-schedule/--beat-database-url: the schedule is read on the "
                          "probe timer, which --probe-interval 0 disables")
    from celery_events_exporter.beat.sources import DatabaseSource, ModuleSource

    sources: list[object] = []
    if args.beat_schedule:
        sources.append(ModuleSource(args.beat_schedule))
    if args.beat_database_url:
        sources.append(DatabaseSource(args.beat_database_url))
    return tuple(sources)


def web_limits(args: argparse.Namespace) -> Limits:
    if not args.web_header_timeout > 0:
        raise ConfigError("--web-header-timeout: must be more than 0 seconds")
    if args.web_max_connections < 1:
        raise ConfigError("--web-max-connections: must be at least 1")
    return Limits(header_timeout=args.web_header_timeout,
                  max_connections=args.web_max_connections)


def run(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        from celery_events_exporter import webconfig

        web = webconfig.load(config.web_config_file) if config.web_config_file else None
        limits = web_limits(args)
    except ConfigError as exc:
        parser.exit(2, f"celery-events-exporter: error: {exc}\n")
    setup_logging(config.log_level)
    from celery_events_exporter.app import Exporter

    try:
        exporter = Exporter(config, web, protect_health=args.protect_health, limits=limits)
    except OSError as exc:
        parser.exit(1, f"celery-events-exporter: error: --host/--port: cannot listen on "
                       f"{config.host}:{config.port}: {exc.strerror}\n")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    exporter.start()
    while not stop.wait(3600):
        pass
    log.info("shutting down")
    exporter.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else "run"
    if argv and argv[0] == command:
        argv = argv[1:]
    if command == "check":
        from celery_events_exporter.check import main as check_main

        return check_main(argv)
    if command in ("dashboards", "rules"):
        return _generator(command, argv)
    return run(argv)


# Subcommands whose code needs an optional extra (grafanalib for the dashboards); the plain
# wheel installs only what the exporter itself runs on.
EXTRAS = {"dashboards": "dashboards"}


def _generator(command: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="celery-events-exporter")
    sub = parser.add_subparsers(dest="command", required=True)
    try:
        if command == "dashboards":
            from celery_events_exporter.dashboards import cli as gen
        else:
            from celery_events_exporter.alerts import cli as gen
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get(command)
        if extra is None:
            raise
        parser.exit(2, f"celery-events-exporter {command}: needs the `{extra}` extra "
                       f"(missing module {exc.name!r}): "
                       f"pip install 'celery-events-exporter[{extra}]'\n")
    gen.register(sub)
    args = parser.parse_args([command, *argv])
    return gen.run(args)


if __name__ == "__main__":
    sys.exit(main())

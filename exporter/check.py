"""`celery-events-exporter check`: listen for a few seconds and say what is there.

Meant for the first five minutes with the exporter: is the broker reachable, are workers
alive, are task events and task-sent events on, what do the queues hold, what to change.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from celery_events_exporter.brokerargs import add_broker_args, resolve_broker, setup_logging
from celery_events_exporter.config import Config, ConfigError
from celery_events_exporter.ingest import make_consumer
from celery_events_exporter.pipeline import Pipeline
from celery_events_exporter.probes import Probe, ProbeResults, ProbeRunner
from celery_events_exporter.state import State

if TYPE_CHECKING:
    from celery_events_exporter.probes.workers import InspectProbe

# What `inspect conf` is asked for when no task ran while listening.
CONF_KEYS = ("worker_send_task_events", "task_send_sent_event")
TASK_EVENTS = ("task-received", "task-started", "task-succeeded", "task-failed",
               "task-retried", "task-rejected", "task-revoked")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="celery-events-exporter check",
                                description="Connect to the broker, listen, and report what "
                                            "the exporter would see.")
    add_broker_args(p)
    p.add_argument("--seconds", type=float, default=10.0, help="how long to listen (default 10)")
    p.add_argument("--queue", action="append", default=[], help="queue to measure (repeatable)")
    p.add_argument("--no-inspect", action="store_true",
                   help="do not ask workers (inspect) for their queues and pool size")
    return p


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 600:
        parser.exit(2, "celery-events-exporter check: error: --seconds: must be in (0, 600]\n")
    try:
        url, options, exchange = resolve_broker(args)
    except ConfigError as exc:
        parser.exit(2, f"celery-events-exporter check: error: {exc}\n")
    setup_logging("ERROR")
    config = Config(broker_url=url, transport_options=options, events_exchange=exchange,
                    queues=tuple(args.queue), inspect=not args.no_inspect)
    report = listen(config, args.seconds)
    print(report.text)
    return 0 if report.ok else 1


class Report:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.problems = 0
        self.unknowns = 0

    def say(self, line: str) -> None:
        self.lines.append(line)

    def problem(self, line: str) -> None:
        self.problems += 1
        self.lines.append(f"PROBLEM: {line}")

    def unknown(self, line: str) -> None:
        """Something that could not be checked: never reported as fine."""
        self.unknowns += 1
        self.lines.append(f"UNKNOWN: {line}")

    @property
    def ok(self) -> bool:
        return self.problems == 0

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def listen(config: Config, seconds: float) -> Report:
    state = State()
    pipeline = Pipeline(state)
    consumer = make_consumer(config, pipeline)
    report = Report()
    report.say(f"Broker: {config.redacted_broker_url} (events exchange {config.events_exchange!r})")
    consumer.start()
    first_processed: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(0.25)
            with pipeline.lock:
                for hostname, worker in state.workers.items():
                    if worker.last_processed is not None:
                        first_processed.setdefault(hostname, worker.last_processed)
    finally:
        # Read before stop(): stopping the consumer always leaves the pipeline disconnected.
        connected = pipeline.connected
        consumer.stop()
    if not connected and not state.event_types:
        report.problem("could not connect to the broker, or lost the connection at once. "
                       "Check the URL, credentials, and that this host can reach the broker.")
        return report
    report.say(f"Listened for {seconds:g}s.")
    _workers(report, state, first_processed)
    confs = _ask_workers(report, config, state)
    _events(report, state, confs)
    _queues(report, config, state)
    dropped = {k: v for k, v in state.invalid.items() if v}  # every reason starts at 0
    if dropped:
        report.say("Dropped invalid messages: "
                   + ", ".join(f"{k}={v}" for k, v in sorted(dropped.items())))
    if not report.ok:
        report.say(f"{report.problems} problem(s) found; see above.")
    elif report.unknowns:
        report.say(f"No problem found, but {report.unknowns} thing(s) could not be checked "
                   f"(UNKNOWN above).")
    else:
        report.say("Everything looks right.")
    return report


def _workers(report: Report, state: State, first_processed: dict[str, int]) -> None:
    workers = sorted(state.workers.values(), key=lambda w: w.hostname)
    if not workers:
        report.problem("no worker heartbeats. Workers send heartbeats even without -E, so no "
                       "worker is running against this broker (or it uses another vhost/db, "
                       "key prefix or events exchange).")
        return
    report.say(f"Workers: {len(workers)}")
    for w in workers:
        grown = (w.last_processed or 0) - first_processed.get(w.hostname, w.last_processed or 0)
        report.say(f"  {w.hostname}: {'up' if w.up else 'down'}, celery {w.sw_ver or '?'}, "
                   f"active {w.active if w.active is not None else '?'}, "
                   f"processed +{grown} while listening")


class _ConfProbe(Probe):
    """`inspect conf` under the probe runner's deadline."""

    name = "inspect_conf"

    def __init__(self, inspect: InspectProbe, workers: list[str]) -> None:
        self.inspect = inspect
        self.workers = workers
        self.timeout = inspect.timeout
        self.replies: dict[str, dict[str, object]] | None = None

    def run(self, results: ProbeResults) -> None:
        self.replies = self.inspect.conf(CONF_KEYS, self.workers)

    def abort(self) -> None:
        self.inspect.abort()


def _ask_workers(report: Report, config: Config,
                 state: State) -> dict[str, dict[str, object]] | None:
    """Pool, prefetch and queues of each live worker (said under Workers), and the settings
    in CONF_KEYS; None when the workers were not asked or did not answer."""
    if not config.inspect or not any(w.up for w in state.workers.values()):
        return None
    from celery_events_exporter.probes.workers import InspectProbe

    inspect = InspectProbe(config.broker_url, config.transport_options, Pipeline(state), 0, 2,
                           live_workers=lambda: sum(w.up for w in state.workers.values()))
    conf = _ConfProbe(inspect, sorted(h for h, w in state.workers.items() if w.up))
    results = ProbeResults()
    runner = ProbeRunner([inspect, conf], results)
    try:
        runner.run_once(inspect)
        runner.run_once(conf)
    finally:
        inspect.close()
    for w in sorted(state.workers.values(), key=lambda w: w.hostname):
        if w.pool is not None:
            report.say(f"  {w.hostname}: pool {w.pool}, prefetch limit {w.prefetch_limit}, "
                       f"queues {', '.join(sorted(w.queues)) or '?'}")
    for name, status in sorted(results.status.items()):
        if not status.success and status.last_error:
            report.say(f"Probe {name} failed: {status.last_error}")
    return conf.replies if results.status[conf.name].success else None


def _names(hosts: list[str], most: int = 5) -> str:
    shown = ", ".join(hosts[:most])
    return shown + (f" and {len(hosts) - most} more" if len(hosts) > most else "")


def _events(report: Report, state: State, confs: dict[str, dict[str, object]] | None) -> None:
    types = state.event_types
    task_events = sum(types.get(t, 0) for t in TASK_EVENTS)
    processed_growth = state.task_events_missing
    if task_events:
        report.say(f"Task events: on ({task_events} seen).")
    elif processed_growth or any(w.silent_beats for w in state.workers.values()):
        report.problem("workers are processing tasks but send no task events. Start workers "
                       "with -E, or set worker_send_task_events = True "
                       "(CELERY_WORKER_SEND_TASK_EVENTS in Django settings), or run "
                       "`celery -A proj control enable_events` (lost on restart).")
    else:
        _task_events_by_conf(report, state, confs)
    if types.get("task-sent"):
        report.say(f"task-sent events: on ({types['task-sent']} seen); queue wait is measured.")
    elif task_events:
        report.problem("no task-sent events: queue wait (publish to start) cannot be measured. "
                       "Set task_send_sent_event = True (CELERY_TASK_SEND_SENT_EVENT) in the "
                       "producers' (web) settings.")
    else:
        # Producers cannot be asked; the workers' own setting covers the tasks they publish.
        own = ""
        if confs:
            own = " Workers' own task_send_sent_event (for tasks they publish): " + ", ".join(
                f"{h} {c.get('task_send_sent_event', '?')}" for h, c in sorted(confs.items()))
        report.unknown("no task was published while listening, so whether the producers set "
                       "task_send_sent_event = True (needed for queue wait) cannot be known: "
                       "publish a task while checking to tell." + own)


def _task_events_by_conf(report: Report, state: State,
                         confs: dict[str, dict[str, object]] | None) -> None:
    """No task ran while listening: what the workers' configuration says instead."""
    live = sorted(h for h, w in state.workers.items() if w.up)
    if not live:
        return
    if confs is None:
        report.unknown("no task ran while listening and the workers were not asked "
                       "(--no-inspect, or inspect failed): task events may be off "
                       "(-E / worker_send_task_events). Run some tasks and check again.")
        return
    setting = {h: confs.get(h, {}).get("worker_send_task_events") for h in live}
    off = [h for h in live if setting[h] is False]
    on = [h for h in live if setting[h] is True]
    silent = [h for h in live if setting[h] not in (True, False)]
    if off:
        report.problem(f"task events are off in the configuration of {len(off)} worker(s) "
                       f"({_names(off)}): worker_send_task_events = False, and no task event "
                       f"arrived while listening. Set worker_send_task_events = True "
                       f"(CELERY_WORKER_SEND_TASK_EVENTS in Django settings). A worker "
                       f"started with -E sends them anyway, which `inspect conf` does not "
                       f"show: run a task while checking to tell.")
    if on and not off and not silent:
        report.say(f"Task events: on in the configuration of every worker ({len(on)}: "
                   f"{_names(on)}); no task ran while listening.")
    elif on:
        report.say(f"Task events: on in the configuration of {_names(on)}.")
    if silent:
        report.unknown(f"{_names(silent)} did not answer `inspect conf`: whether they send "
                       f"task events is unknown.")


def _queues(report: Report, config: Config, state: State) -> None:
    queues = set(config.queues) | set(state.queues_seen) | {"celery"}
    for w in state.workers.values():
        queues.update(w.queues)
    results = ProbeResults()
    probes: list[Probe] = []
    if config.is_redis:
        from celery_events_exporter.probes.queues import RedisQueueProbe
        from celery_events_exporter.redisconf import parse

        probes.append(RedisQueueProbe(parse(config.broker_url, config.transport_options),
                                      lambda: queues, 0, 5))
    elif config.is_amqp:
        from celery_events_exporter.probes.queues import AmqpQueueProbe

        probes.append(AmqpQueueProbe(config.broker_url, config.transport_options,
                                     lambda: queues, 0, 5))
    runner = ProbeRunner(probes, results)
    for probe in probes:
        runner.run_once(probe)
        probe.close()
    lengths = results.queues.length
    if lengths:
        report.say("Queues: " + ", ".join(f"{q}={int(n)}" for q, n in sorted(lengths.items())))
    for name, status in results.status.items():
        if not status.success and status.last_error:
            report.say(f"Probe {name} failed: {status.last_error}")

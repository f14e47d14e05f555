from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from kombu.exceptions import OperationalError
from proj.celery import app

from tasks.loadgen import MIXES, SCENARIOS, LoadGenerator, LoadOptions, parse_scenarios


class Command(BaseCommand):
    help = ("Publish a steady mix of tasks (successes, failures, retries, ETA, slow, revoked) "
            "at --rate per second until --duration or --max-tasks, whichever comes first.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rate", type=float, default=20.0, help="tasks per second")
        parser.add_argument("--duration", type=float, default=60.0, help="seconds to run")
        parser.add_argument("--max-tasks", type=int, default=None,
                            help="stop after this many tasks (default: rate x duration)")
        parser.add_argument("--seed", type=int, default=None, help="for a reproducible run")
        parser.add_argument("--mix", choices=sorted(MIXES), default="default")
        parser.add_argument("--slow-seconds", type=float, default=8.0,
                            help="upper bound of a slow_report's runtime")
        parser.add_argument("--max-countdown", type=float, default=20.0,
                            help="upper bound of ETA/countdown delays (and revoke windows)")
        parser.add_argument("--stuck-queue", default="",
                            help="also send hour-long tasks to this queue (one in "
                                 "ten), for a worker that never starts them: a stuck queue")
        parser.add_argument(
            "--scenario", action="append", default=[], metavar="NAME[,NAME]",
            help="produce an incident at the start of the run (repeatable, or a comma "
                 "list); with --max-tasks 0 nothing else is sent. "
                 + "; ".join(f"{name}: {s.what} -> {s.alert}" for name, s in SCENARIOS.items()))

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            options = LoadOptions(rate=opts["rate"], duration=opts["duration"],
                                  max_tasks=opts["max_tasks"], seed=opts["seed"],
                                  mix=opts["mix"], slow_seconds=opts["slow_seconds"],
                                  max_countdown=opts["max_countdown"],
                                  stuck_queue=opts["stuck_queue"],
                                  scenarios=parse_scenarios(opts["scenario"]))
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        generator = LoadGenerator(app, options)
        try:
            summary = generator.run()
        except OperationalError as exc:
            # The broker URL may carry a password: name the error, not the URL.
            raise CommandError(f"broker unavailable after {generator.summary.sent} tasks: "
                               f"{type(exc).__name__}") from exc
        self.stdout.write(summary.line())

"""A steady, mixed, reproducible load for the exporter demo (driven by `manage.py loadgen`).

Each kind below publishes one task the way application code would. A mix is a table of
weights; tasks are drawn from shuffled decks built from those weights, so every kind shows
up within one deck even on short runs, while the order still looks random.

Scenarios (`--scenario`) are incidents on demand: each publishes, once at the start of the
run, the real work that produces one incident on a real worker (see SCENARIOS).
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from celery import Celery

from tasks import tasks
from tasks.priorities import priority_for
from tasks.services import register_signup

MIXES: dict[str, dict[str, int]] = {
    # Mostly healthy traffic with every failure mode present.
    "default": {"email": 2, "password_reset": 1, "resize": 2, "crunch": 2, "batch": 1,
                "import_ok": 1, "fail_value": 1, "fail_key": 1, "flaky_ok": 2,
                "flaky_fail": 1, "eta": 1, "slow": 2, "revoke": 1},
    # Slow reports dominate: queues grow and, with a prefetch multiplier above 1, worker
    # buffers fill up behind running tasks.
    "backlog": {"slow": 8, "crunch": 2, "email": 1, "resize": 1, "eta": 1, "revoke": 1},
    # Enough failures and retries to trip failure-ratio alerts.
    "failures": {"fail_value": 3, "fail_key": 3, "flaky_fail": 3, "flaky_ok": 3,
                 "crunch": 2, "email": 1},
}


# With a stuck queue, one task in this many goes there (the first one included).
STUCK_EVERY = 10
STUCK_SECONDS = 3600.0

# Incident scenarios. Their queues: `fragile` is consumed only by a worker started for the
# crash (scripts/demo --scenario interrupted), `unconsumed` by no worker at all.
CRASH_QUEUE = "fragile"
UNCONSUMED_QUEUE = "unconsumed"
# A report that normally takes seconds running for minutes (the demo's rules give
# tasks.slow_report a 20 s limit; its soft time limit ends it at 600 s).
LONG_SECONDS = 300.0
# How long the crash task runs before it kills its worker.
CRASH_AFTER_SECONDS = 3.0


@dataclass(frozen=True)
class Scenario:
    alert: str  # what fires with the demo's rules (scripts/stack.py DEMO_CONFIG)
    what: str


SCENARIOS: dict[str, Scenario] = {
    "long": Scenario("CeleryTaskRunningTooLong",
                     f"a tasks.slow_report on `reports` that runs {LONG_SECONDS:g} s instead "
                     f"of seconds"),
    "interrupted": Scenario("CeleryTasksInterrupted",
                            f"tasks.crash_worker on `{CRASH_QUEUE}`: SIGKILLs the worker "
                            f"running it mid-task (demo only)"),
    "waiting": Scenario("CeleryQueueOldestWaitingHigh",
                        f"a task on `{UNCONSUMED_QUEUE}`, a queue no worker consumes: it "
                        f"waits, nothing starts (CeleryQueueNoConsumers too)"),
}


def parse_scenarios(values: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """`--scenario a,b --scenario c` -> ("a", "b", "c"), in order, once each."""
    names: list[str] = []
    for value in values:
        for name in (n.strip() for n in value.split(",")):
            if name and name not in names:
                names.append(name)
    return tuple(names)


@dataclass(frozen=True)
class LoadOptions:
    rate: float = 20.0
    duration: float = 60.0
    max_tasks: int | None = None
    seed: int | None = None
    mix: str = "default"
    slow_seconds: float = 8.0
    max_countdown: float = 20.0
    # A queue whose consumer never starts what it sends (see `_send_stuck`): the demo's
    # stuck-queue scenario. Empty: off.
    stuck_queue: str = ""
    # Incidents to produce at the start of the run (SCENARIOS), not counted as load.
    scenarios: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError("rate must be > 0")
        if not self.duration > 0:
            raise ValueError("duration must be > 0")
        unknown = [name for name in self.scenarios if name not in SCENARIOS]
        if unknown:
            raise ValueError(f"unknown scenario(s) {', '.join(unknown)} "
                             f"(choose from {', '.join(SCENARIOS)})")
        # 0 tasks: the scenarios alone.
        if self.max_tasks is not None and self.max_tasks < (0 if self.scenarios else 1):
            raise ValueError("max-tasks must be >= 1 (or 0 with --scenario)")
        if self.mix not in MIXES:
            raise ValueError(f"unknown mix {self.mix!r} (choose from {', '.join(MIXES)})")
        if self.slow_seconds <= 0 or self.max_countdown < 1:
            raise ValueError("slow-seconds must be > 0 and max-countdown >= 1")
        if self.stuck_queue != self.stuck_queue.strip():
            raise ValueError("stuck-queue must be a queue name without spaces around it")


@dataclass
class Summary:
    options: LoadOptions
    seed: int
    sent: int = 0
    revoked: int = 0
    elapsed: float = 0.0
    stopped_by: str = ""
    kinds: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        rate = self.sent / self.elapsed if self.elapsed > 0 else 0.0
        kinds = " ".join(f"{k}={n}" for k, n in sorted(self.kinds.items()))
        scenarios = (f" scenarios={','.join(self.options.scenarios)}"
                     if self.options.scenarios else "")
        return (f"loadgen: sent {self.sent} tasks in {self.elapsed:.1f}s ({rate:.1f}/s) "
                f"mix={self.options.mix} seed={self.seed} stopped_by={self.stopped_by} "
                f"revoked={self.revoked}{scenarios} | {kinds}")


def deck(weights: dict[str, int], rng: random.Random) -> list[str]:
    cards = [kind for kind, weight in weights.items() for _ in range(weight)]
    rng.shuffle(cards)
    return cards


class LoadGenerator:
    def __init__(self, app: Celery, options: LoadOptions,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.app = app
        self.opts = options
        self.seed = options.seed if options.seed is not None else random.randrange(2**31)
        self.rng = random.Random(self.seed)
        self.clock = clock
        self.sleep = sleep
        self.summary = Summary(options, self.seed)
        self._deck: list[str] = []
        self._pending_revokes: list[tuple[float, str]] = []
        self._seq = 0

    # --- the loop ---------------------------------------------------------------------

    def run(self) -> Summary:
        opts = self.opts
        # Without --max-tasks the schedule itself ends at rate x duration tasks.
        limit = opts.max_tasks if opts.max_tasks is not None else float("inf")
        for name in opts.scenarios:
            getattr(self, f"_scenario_{name}")()
        start = self.clock()
        deadline = start + opts.duration
        try:
            while True:
                if self.summary.sent >= limit:
                    self.summary.stopped_by = "max-tasks"
                    break
                now = self.clock()
                target = start + self.summary.sent / opts.rate
                if target >= deadline or now >= deadline:
                    self.summary.stopped_by = "duration"
                    break
                self._revoke_due(now)
                if target > now:
                    # Short naps keep revokes on time at low rates.
                    self.sleep(min(target - now, 0.25))
                    continue
                self._publish(self._next_kind())
        finally:
            # A task scheduled for revocation is revoked before we leave, never left to run.
            self._revoke_due(float("inf"))
            self.summary.elapsed = self.clock() - start
        return self.summary

    def _next_kind(self) -> str:
        if not self._deck:
            self._deck = deck(MIXES[self.opts.mix], self.rng)
        return self._deck.pop()

    def _publish(self, kind: str) -> None:
        self._seq += 1
        if self.opts.stuck_queue and self._seq % STUCK_EVERY == 1:
            kind = "stuck"
        getattr(self, f"_send_{kind}")()
        self.summary.kinds[kind] += 1
        self.summary.sent += 1

    def _revoke_due(self, now: float) -> None:
        due = [task_id for at, task_id in self._pending_revokes if at <= now]
        if not due:
            return
        self._pending_revokes = [(at, t) for at, t in self._pending_revokes if at > now]
        for task_id in due:
            self.app.control.revoke(task_id)
            self.summary.revoked += 1

    # --- one method per kind of work --------------------------------------------------

    def _send_email(self) -> None:
        register_signup(f"loadgen-{self.seed}-{self._seq}@example.com")

    def _send_password_reset(self) -> None:
        level = self.rng.choice(["high", "low"])
        tasks.send_password_reset.apply_async(
            (f"user{self._seq}@example.com",),
            priority=priority_for(level, self.app.conf.broker_url))

    def _send_resize(self) -> None:
        tasks.resize_image.delay(width=self.rng.randrange(400, 1200),
                                 height=self.rng.randrange(300, 900),
                                 max_side=128, seed=self._seq)

    def _send_crunch(self) -> None:
        tasks.crunch_numbers.delay(self.rng.randrange(20_000, 400_000))

    def _send_batch(self) -> None:
        items = [self.rng.randrange(1_000) for _ in range(self.rng.randrange(100, 600))]
        tasks.process_batch.delay(items, chunk_size=100)

    def _send_import_ok(self) -> None:
        tasks.import_record.delay({"id": self._seq, "email": f"c{self._seq}@example.com",
                                   "plan": "team", "seats": self.rng.randrange(1, 50)})

    def _send_fail_value(self) -> None:
        bad = self.rng.choice([{"seats": "ten"}, {"plan": "platinum"}, {"seats": 0}])
        record = {"id": self._seq, "email": f"c{self._seq}@example.com", "plan": "free", **bad}
        tasks.import_record.delay(record)

    def _send_fail_key(self) -> None:
        tasks.import_record.delay({"id": self._seq, "email": f"c{self._seq}@example.com"})

    def _send_flaky_ok(self) -> None:
        tasks.call_flaky_service.delay("billing", fail_first=self.rng.randrange(1, 3))

    def _send_flaky_fail(self) -> None:
        # More failures than max_retries: retried with backoff, then fails for good.
        tasks.call_flaky_service.delay("geocoder", fail_first=99)

    def _send_eta(self) -> None:
        delay = self.rng.uniform(1.0, self.opts.max_countdown)
        if self.rng.random() < 0.5:
            tasks.crunch_numbers.apply_async((50_000,), countdown=delay)
        else:
            eta = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)
            tasks.crunch_numbers.apply_async((50_000,), eta=eta)

    def _send_slow(self) -> None:
        seconds = round(self.rng.uniform(0.5, 1.0) * self.opts.slow_seconds, 2)
        tasks.slow_report.delay(seconds, rows=self.rng.randrange(100, 10_000))

    def _send_stuck(self) -> None:
        # An hour-long report to the stuck queue. Its worker runs one at a time (-c 1,
        # prefetch 1), so the first one occupies it and every later one waits in the broker
        # with a consumer present and nothing starting: CeleryQueueStuck.
        tasks.slow_report.apply_async((STUCK_SECONDS,), queue=self.opts.stuck_queue)

    def _send_revoke(self) -> None:
        countdown = self.rng.uniform(max(1.0, self.opts.max_countdown / 2), self.opts.max_countdown)
        result = tasks.slow_report.apply_async((self.opts.slow_seconds,), countdown=countdown)
        # Change our mind a quarter of the way to the ETA, like a user cancelling a report.
        self._pending_revokes.append((self.clock() + countdown / 4, result.id))

    # --- one method per incident scenario (SCENARIOS) ---------------------------------

    def _scenario_long(self) -> None:
        tasks.slow_report.apply_async((LONG_SECONDS,), kwargs={"rows": 1})

    def _scenario_interrupted(self) -> None:
        # Routed to CRASH_QUEUE (settings.CELERY_TASK_ROUTES).
        tasks.crash_worker.apply_async((CRASH_AFTER_SECONDS,))

    def _scenario_waiting(self) -> None:
        tasks.crunch_numbers.apply_async((50_000,), queue=UNCONSUMED_QUEUE)

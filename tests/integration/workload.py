"""The fixed task mix the lifecycle tests run, and the exact numbers it must produce."""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.integration.harness import QUEUES, Exporter, Metrics, Producer

ADD, FAIL, FLAKY = "tests.add", "tests.fail", "tests.flaky"
# Long enough for the worker to receive it, under load, before it is due.
REVOKE_COUNTDOWN = 5.0


@dataclass
class Expected:
    """Per (name, queue): counter values and histogram counts the workload produces."""

    sent: dict[tuple[str, str], int] = field(default_factory=dict)
    received: dict[tuple[str, str], int] = field(default_factory=dict)
    started: dict[tuple[str, str], int] = field(default_factory=dict)
    succeeded: dict[tuple[str, str], int] = field(default_factory=dict)
    failed: dict[tuple[str, str, str], int] = field(default_factory=dict)
    retried: dict[tuple[str, str], int] = field(default_factory=dict)
    revoked: dict[tuple[str, str, str], int] = field(default_factory=dict)
    queue_wait: dict[tuple[str, str], int] = field(default_factory=dict)
    prefetch_wait: dict[tuple[str, str], int] = field(default_factory=dict)
    runtime: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def finished(self) -> int:
        return (sum(self.succeeded.values()) + sum(self.failed.values())
                + sum(self.revoked.values()))


def publish_lifecycle(p: Producer, successes: int = 4) -> tuple[Expected, str]:
    """Successes, two exception classes, a task retried twice, an ETA task, a countdown
    task to revoke, a priority task. Returns what the exporter must count and the id to
    revoke once a worker holds it.

    Published while no worker consumes: a producer sends task-sent *after* the task
    message, so an idle worker's task-received can reach the exporter first and be
    labelled queue="unknown"; a backlog keeps the label assertions exact.
    """
    d, o, q = "default", "other", "prio"
    for i in range(successes):
        p.send(ADD, i, i)
    p.send(FAIL, "value", queue=o)
    p.send(FAIL, "value", queue=o)
    p.send(FAIL, "key", queue=o)
    p.send(FLAKY)  # fails twice with retry(countdown=0.2), then succeeds
    p.send(ADD, 1, 2, countdown=1.5)
    p.send(ADD, 2, 3, queue=q, priority=5)
    revoke_id = p.send(ADD, 0, 0, countdown=REVOKE_COUNTDOWN)
    n = successes
    expected = Expected(
        sent={(ADD, d): n + 2, (FAIL, o): 3, (FLAKY, d): 3, (ADD, q): 1},
        received={(ADD, d): n + 2, (FAIL, o): 3, (FLAKY, d): 3, (ADD, q): 1},
        started={(ADD, d): n + 1, (FAIL, o): 3, (FLAKY, d): 3, (ADD, q): 1},
        succeeded={(ADD, d): n + 1, (FLAKY, d): 1, (ADD, q): 1},
        failed={(FAIL, o, "ValueError"): 2, (FAIL, o, "KeyError"): 1},
        retried={(FLAKY, d): 2},
        revoked={(ADD, d, "revoked"): 1},
        # Every started attempt had a task-sent (retries publish one too).
        queue_wait={(ADD, d): n + 1, (FAIL, o): 3, (FLAKY, d): 3, (ADD, q): 1},
        # ETA/countdown attempts (the ETA add, both retries) sit out of the prefetch wait.
        prefetch_wait={(ADD, d): n, (FAIL, o): 3, (FLAKY, d): 1, (ADD, q): 1},
        # Succeeded and failed executions; retried attempts are neither.
        runtime={(ADD, d): n + 1, (FAIL, o): 3, (FLAKY, d): 1, (ADD, q): 1},
    )
    return expected, revoke_id


def run_lifecycle(exporters: list[Exporter], worker: str, p: Producer) -> Expected:
    """Publish the backlog while `worker` (started with `-Q idle`) consumes nothing, let it
    consume, and revoke the countdown task once the worker holds it."""
    expected, revoke_id = publish_lifecycle(p)
    initial = sum(expected.sent.values()) - 2  # the two retries are published later
    for e in exporters:
        e.wait(lambda m: m.value("celery_exporter_events_total", type="task-sent") >= initial,
               f"{initial} task-sent events")
    for queue in QUEUES:
        reply = p.app.control.add_consumer(queue, destination=[worker], reply=True,
                                           timeout=10)
        assert reply and "ok" in reply[0][worker], f"add_consumer {queue}: {reply}"
    adds = expected.received[(ADD, "default")]
    exporters[0].wait(
        lambda m: m.value("celery_task_received_total", name=ADD, queue="default",
                          worker=worker) >= adds,
        "the worker holds the countdown task")
    p.revoke(revoke_id)  # before its ETA; the worker announces task-revoked at the ETA
    return expected


def finished(m: Metrics) -> float:
    return (m.total("celery_task_succeeded_total") + m.total("celery_task_failed_total")
            + m.total("celery_task_revoked_total"))


def task_numbers(m: Metrics) -> dict[str, dict[tuple[str, ...], float]]:
    """Every task counter and histogram count, keyed for comparison between exporters."""
    w = ("name", "queue", "worker")
    return {
        "sent": m.table("celery_task_sent_total", "name", "queue"),
        "received": m.table("celery_task_received_total", *w),
        "started": m.table("celery_task_started_total", *w),
        "succeeded": m.table("celery_task_succeeded_total", *w),
        "failed": m.table("celery_task_failed_total", *w, "exception"),
        "retried": m.table("celery_task_retried_total", *w),
        "rejected": m.table("celery_task_rejected_total", *w),
        "revoked": m.table("celery_task_revoked_total", *w, "reason"),
        "queue_wait": m.table("celery_task_queue_wait_seconds_count", "name", "queue"),
        "prefetch_wait": m.table("celery_task_prefetch_wait_seconds_count", "name", "queue"),
        "runtime": m.table("celery_task_runtime_seconds_count", "name", "queue"),
    }


def expected_numbers(e: Expected, worker: str) -> dict[str, dict[tuple[str, ...], float]]:
    def w(d: dict) -> dict:
        return {(k[0], k[1], worker, *k[2:]): float(v) for k, v in d.items()}

    def f(d: dict) -> dict:
        return {k: float(v) for k, v in d.items()}

    return {
        "sent": f(e.sent), "received": w(e.received), "started": w(e.started),
        "succeeded": w(e.succeeded), "failed": w(e.failed), "retried": w(e.retried),
        "rejected": {}, "revoked": w(e.revoked), "queue_wait": f(e.queue_wait),
        "prefetch_wait": f(e.prefetch_wait), "runtime": f(e.runtime),
    }


def mismatches(got: dict, want: dict) -> list[str]:
    """Differences between task_numbers() and expected_numbers()."""
    out = []
    for metric, rows in want.items():
        seen = got.get(metric, {})
        for key in sorted(set(rows) | set(seen)):
            g, w = seen.get(key), rows.get(key)
            if g != w:
                out.append(f"{metric}{key}: got {g}, want {w}")
    return out

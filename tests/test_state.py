"""State driven by scripted event sequences: a list of events in, numbers out. No broker."""

from __future__ import annotations

import re
from datetime import UTC

import pytest

from celery_events_exporter import metrics as m
from celery_events_exporter.labels import LabelPolicy
from celery_events_exporter.state import State, StateConfig, apply_worker_probe

T0 = 1_700_000_000.0
W1, W2 = "celery@w1", "celery@w2"
PRODUCER = "gen42@web1"


def ev(kind: str, ts: float, **fields: object) -> dict:
    hostname = fields.pop("hostname", PRODUCER if kind == "task-sent" else W1)
    return {"type": kind, "timestamp": ts, "hostname": hostname, **fields}


def lifecycle(uuid: str, t: float, name: str = "app.add", queue: str = "default",
              worker: str = W1, outcome: str = "task-succeeded", **extra: object) -> list[dict]:
    finish = {"runtime": 0.5} if outcome == "task-succeeded" else {"exception": "ValueError('x')"}
    return [
        ev("task-sent", t, uuid=uuid, name=name, queue=queue, retries=0, eta=None),
        ev("task-received", t + 0.1, uuid=uuid, name=name, retries=0, eta=None, hostname=worker),
        ev("task-started", t + 0.3, uuid=uuid, hostname=worker),
        ev(outcome, t + 0.8, uuid=uuid, hostname=worker, **finish, **extra),
    ]


def feed(state: State, events: list[dict], lag: float = 0.0) -> None:
    """Deliver each event alone, received `lag` seconds after its timestamp."""
    for event in events:
        state.ingest([event], event["timestamp"] + lag)


def settle(state: State) -> None:
    """Let the grace for a late task-sent pass, so held observations are recorded."""
    state.tick(T0 + 3600)


def counter(state: State, metric: m.Metric, *key: str) -> float:
    cell = state.counters[metric.key].data.get(key)
    return cell[0] if cell else 0.0


def hist(state: State, metric: m.Metric, *key: str) -> tuple[int, float]:
    cell = state.histograms[metric.key].data.get(key)
    return (int(sum(cell[:-1])), cell[-1]) if cell else (0, 0.0)


def online(state: State, worker: str = W1, t: float = T0 - 10) -> None:
    state.ingest([ev("worker-online", t, hostname=worker, freq=2.0, sw_ver="5.7.0",
                     sw_ident="py-celery", sw_sys="Linux")], t)


# -- task lifecycle ------------------------------------------------------------------------


def test_full_lifecycle_counts_each_state_and_all_three_waits() -> None:
    s = State()
    online(s)
    feed(s, lifecycle("a", T0))
    key = ("app.add", "default", W1)
    assert counter(s, m.TASK_SENT, "app.add", "default") == 1
    for metric in (m.TASK_RECEIVED, m.TASK_STARTED, m.TASK_SUCCEEDED):
        assert counter(s, metric, *key) == 1
    assert hist(s, m.QUEUE_WAIT, "app.add", "default") == (1, pytest.approx(0.3))
    assert hist(s, m.PREFETCH_WAIT, "app.add", "default") == (1, pytest.approx(0.2))
    assert hist(s, m.RUNTIME, "app.add", "default") == (1, 0.5)
    assert not s.tasks, "a finished task leaves the in-flight table"
    assert s.workers[W1].prefetched == 0


def test_histogram_buckets_use_le_semantics() -> None:
    s = State(StateConfig(buckets={m.RUNTIME.key: (0.5, 1.0)}))
    feed(s, lifecycle("a", T0))  # runtime exactly 0.5 lands in le=0.5
    cell = s.histograms[m.RUNTIME.key].data[("app.add", "default")]
    assert cell == [1, 0, 0, 0.5]


def test_failure_counts_exception_class_and_runtime_from_started() -> None:
    s = State()
    feed(s, lifecycle("a", T0, outcome="task-failed"))
    assert counter(s, m.TASK_FAILED, "app.add", "default", W1, "ValueError") == 1
    assert hist(s, m.RUNTIME, "app.add", "default") == (1, pytest.approx(0.5))


@pytest.mark.parametrize(("text", "label"), [
    ("ValueError('x')", "ValueError"),
    ("myapp.errors.Boom('x')", "Boom"),
    ("KeyError(\"a\\nb\")", "KeyError"),
    ("", "unknown"),
    (None, "unknown"),
    ("<weird object at 0x1>", "unknown"),
])
def test_exception_label_is_the_class_name_only(text: object, label: str) -> None:
    s = State()
    feed(s, lifecycle("a", T0, outcome="task-failed")[:3])
    s.ingest([ev("task-failed", T0 + 1, uuid="a", exception=text)], T0 + 1)
    assert counter(s, m.TASK_FAILED, "app.add", "default", W1, label) == 1


def test_revoked_reasons() -> None:
    s = State()
    events = []
    for uuid, extra in (("a", {}), ("b", {"terminated": True, "signum": 15}),
                        ("c", {"expired": True})):
        events += lifecycle(uuid, T0)[:2]
        events.append(ev("task-revoked", T0 + 1, uuid=uuid, **extra))
    feed(s, events)
    for reason in ("revoked", "terminated", "expired"):
        assert counter(s, m.TASK_REVOKED, "app.add", "default", W1, reason) == 1
    assert s.workers[W1].prefetched == 0
    assert not s.tasks


def test_reject_after_failure_keeps_the_task_name() -> None:
    """Reject(requeue=False) gives task-failed then task-rejected for the same uuid."""
    s = State()
    feed(s, lifecycle("a", T0, outcome="task-failed"))
    feed(s, [ev("task-rejected", T0 + 1, uuid="a", requeue=False)])
    assert counter(s, m.TASK_REJECTED, "app.add", "default", W1) == 1
    assert not s.tasks


def test_requeued_reject_keeps_tracking_the_task() -> None:
    s = State()
    feed(s, lifecycle("a", T0)[:2])
    feed(s, [ev("task-rejected", T0 + 1, uuid="a", requeue=True)])
    assert "a" in s.tasks
    assert s.workers[W1].prefetched == 0
    feed(s, [ev("task-received", T0 + 2, uuid="a", retries=0, eta=None, hostname=W2)])
    assert s.workers[W2].prefetched == 1


# -- missed, duplicated and out-of-order events ------------------------------------------------


def test_events_for_tasks_seen_mid_flight_still_count() -> None:
    s = State()
    feed(s, [ev("task-started", T0, uuid="x"), ev("task-succeeded", T0 + 1, uuid="x", runtime=1.0),
             ev("task-failed", T0 + 1, uuid="y", exception="KeyError('k')")])
    settle(s)
    assert counter(s, m.TASK_STARTED, "unknown", "unknown", W1) == 1
    assert counter(s, m.TASK_SUCCEEDED, "unknown", "unknown", W1) == 1
    assert counter(s, m.TASK_FAILED, "unknown", "unknown", W1, "KeyError") == 1
    assert hist(s, m.RUNTIME, "unknown", "unknown") == (1, 1.0)
    assert hist(s, m.QUEUE_WAIT, "unknown", "unknown") == (0, 0.0)


def test_received_before_sent_still_measures_queue_wait() -> None:
    sent, received, started, done = lifecycle("a", T0)
    s = State()
    feed(s, [received, sent, started, done])
    assert counter(s, m.TASK_SENT, "app.add", "default") == 1
    assert hist(s, m.QUEUE_WAIT, "app.add", "default")[0] == 1


def test_name_and_queue_come_from_the_first_event_that_carries_them() -> None:
    s = State()
    feed(s, [ev("task-received", T0, uuid="a", name="app.x", retries=0, eta=None),
             ev("task-started", T0 + 1, uuid="a"),
             ev("task-succeeded", T0 + 2, uuid="a", runtime=1.0)])
    settle(s)
    assert counter(s, m.TASK_SUCCEEDED, "app.x", "unknown", W1) == 1


def test_queue_label_falls_back_to_the_workers_only_queue() -> None:
    s = State()
    online(s)
    apply_worker_probe(s, W1, 4, 4, frozenset({"emails"}))
    feed(s, [ev("task-received", T0, uuid="a", name="app.x", retries=0, eta=None)])
    assert counter(s, m.TASK_RECEIVED, "app.x", "emails", W1) == 1
    apply_worker_probe(s, W1, 4, 4, frozenset({"emails", "default"}))
    feed(s, [ev("task-received", T0, uuid="b", name="app.x", retries=0, eta=None)])
    settle(s)
    assert counter(s, m.TASK_RECEIVED, "app.x", "unknown", W1) == 1, "ambiguous: unknown"


def test_task_sent_queue_wins_over_worker_queues() -> None:
    s = State()
    online(s)
    apply_worker_probe(s, W1, 4, 4, frozenset({"emails"}))
    feed(s, lifecycle("a", T0, queue="reports"))
    assert counter(s, m.TASK_SUCCEEDED, "app.add", "reports", W1) == 1


def test_duplicate_received_does_not_double_the_prefetch_gauge() -> None:
    s = State()
    sent, received, *_ = lifecycle("a", T0)
    feed(s, [sent, received, received])
    assert s.workers[W1].prefetched == 1


def test_started_without_received_leaves_prefetch_wait_alone() -> None:
    s = State()
    sent, _, started, done = lifecycle("a", T0)
    feed(s, [sent, started, done])
    assert hist(s, m.PREFETCH_WAIT, "app.add", "default") == (0, 0.0)
    assert hist(s, m.QUEUE_WAIT, "app.add", "default")[0] == 1


def _producer_active(s: State) -> None:
    """A task-sent for another task: the producers are known to send task-sent."""
    s.ingest([ev("task-sent", T0 - 1, uuid="other", name="n", queue="q", retries=0, eta=None)],
             T0 - 1)


def test_worker_events_before_task_sent_wait_for_its_queue() -> None:
    s = State()
    _producer_active(s)
    sent, received, started, done = lifecycle("a", T0, queue="reports")
    feed(s, [received, started])
    assert counter(s, m.TASK_RECEIVED, "app.add", "unknown", W1) == 0, "held, not mislabelled"
    feed(s, [sent])
    key = ("app.add", "reports", W1)
    assert counter(s, m.TASK_RECEIVED, *key) == 1
    assert counter(s, m.TASK_STARTED, *key) == 1
    assert hist(s, m.QUEUE_WAIT, "app.add", "reports")[0] == 1, "queue wait from the late sent"
    assert hist(s, m.PREFETCH_WAIT, "app.add", "reports")[0] == 1
    feed(s, [done])
    assert counter(s, m.TASK_SUCCEEDED, *key) == 1
    assert "a" not in s.tasks


def test_task_finished_before_its_task_sent_is_labelled_and_not_tracked_again() -> None:
    s = State()
    _producer_active(s)
    sent, received, started, done = lifecycle("a", T0, queue="reports")
    feed(s, [received, started, done, sent])
    key = ("app.add", "reports", W1)
    for metric in (m.TASK_RECEIVED, m.TASK_STARTED, m.TASK_SUCCEEDED):
        assert counter(s, metric, *key) == 1, metric.key
    assert counter(s, m.TASK_SENT, "app.add", "reports") == 1
    assert hist(s, m.QUEUE_WAIT, "app.add", "reports")[0] == 1
    assert hist(s, m.RUNTIME, "app.add", "reports")[0] == 1
    assert "a" not in s.tasks


def test_held_observations_fall_back_to_unknown_after_the_grace() -> None:
    s = State()
    _producer_active(s)
    _, received, started, done = lifecycle("a", T0)
    feed(s, [received, started, done])
    s.tick(T0 + 1.5)
    assert counter(s, m.TASK_SUCCEEDED, "app.add", "unknown", W1) == 0
    s.tick(T0 + 10)
    assert counter(s, m.TASK_SUCCEEDED, "app.add", "unknown", W1) == 1
    assert counter(s, m.TASK_RECEIVED, "app.add", "unknown", W1) == 1


def test_without_task_sent_events_nothing_is_held_for_long() -> None:
    s = State()
    s.tick(T0)
    feed(s, lifecycle("a", T0)[1:])
    s.tick(T0 + 6)
    assert counter(s, m.TASK_SUCCEEDED, "app.add", "unknown", W1) == 1
    # Five minutes without any task-sent: producers do not send it, nothing is held.
    feed(s, lifecycle("b", T0 + 301)[1:])
    assert counter(s, m.TASK_SUCCEEDED, "app.add", "unknown", W1) == 2


# -- ETA, retries ------------------------------------------------------------------------------


def iso(ts: float) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(ts, UTC).isoformat()


def test_eta_task_is_scheduled_not_prefetched_and_waits_from_its_eta() -> None:
    s = State()
    eta = iso(T0 + 60)
    feed(s, [ev("task-sent", T0, uuid="a", name="app.later", queue="default", retries=0, eta=eta),
             ev("task-received", T0 + 0.1, uuid="a", name="app.later", retries=0, eta=eta)])
    assert (s.workers[W1].prefetched, s.workers[W1].scheduled) == (0, 1)
    feed(s, [ev("task-started", T0 + 60.5, uuid="a"),
             ev("task-succeeded", T0 + 61, uuid="a", runtime=0.5)])
    assert (s.workers[W1].prefetched, s.workers[W1].scheduled) == (0, 0)
    count, total = hist(s, m.QUEUE_WAIT, "app.later", "default")
    assert (count, round(total, 6)) == (1, 0.5), "queue wait starts at the ETA"
    assert hist(s, m.PREFETCH_WAIT, "app.later", "default") == (0, 0.0), "ETA excluded"


def test_naive_eta_is_utc() -> None:
    s = State()
    naive = iso(T0 + 10).replace("+00:00", "")
    feed(s, [ev("task-sent", T0, uuid="a", name="n", queue="q", retries=0, eta=naive),
             ev("task-started", T0 + 11, uuid="a")])
    assert hist(s, m.QUEUE_WAIT, "n", "q") == (1, pytest.approx(1.0))


def test_retry_resets_the_attempt_whatever_order_the_events_come_in() -> None:
    """The retry's task-sent (retries=1) often arrives before the task-retried event."""
    s = State()
    online(s)
    eta = iso(T0 + 5)
    feed(s, [
        ev("task-sent", T0, uuid="a", name="app.flaky", queue="default", retries=0, eta=None),
        ev("task-received", T0 + 0.1, uuid="a", name="app.flaky", retries=0, eta=None),
        ev("task-started", T0 + 0.2, uuid="a"),
        ev("task-sent", T0 + 0.3, uuid="a", name="app.flaky", queue="default", retries=1, eta=eta,
           hostname="gen7@w1"),
        ev("task-retried", T0 + 0.31, uuid="a", exception="IOError()"),
        ev("task-received", T0 + 0.4, uuid="a", name="app.flaky", retries=1, eta=eta),
    ])
    assert s.workers[W1].scheduled == 1
    assert s.workers[W1].prefetched == 0
    feed(s, [ev("task-started", T0 + 5.1, uuid="a"),
             ev("task-succeeded", T0 + 5.2, uuid="a", runtime=0.1)])
    key = ("app.flaky", "default", W1)
    assert counter(s, m.TASK_SENT, "app.flaky", "default") == 2
    assert counter(s, m.TASK_RETRIED, *key) == 1
    assert counter(s, m.TASK_STARTED, *key) == 2
    assert counter(s, m.TASK_SUCCEEDED, *key) == 1
    assert hist(s, m.QUEUE_WAIT, "app.flaky", "default")[0] == 2
    assert hist(s, m.PREFETCH_WAIT, "app.flaky", "default")[0] == 1, "the ETA attempt is excluded"
    assert (s.workers[W1].scheduled, s.workers[W1].prefetched) == (0, 0)
    assert not s.tasks


def test_late_task_retried_after_the_next_attempt_succeeded() -> None:
    """Zero countdown: the next attempt can succeed before the retried event is sent."""
    s = State()
    feed(s, [
        ev("task-sent", T0, uuid="a", name="app.flaky", queue="default", retries=0, eta=None),
        ev("task-started", T0 + 0.1, uuid="a"),
        ev("task-sent", T0 + 0.2, uuid="a", name="app.flaky", queue="default", retries=1,
           eta=None, hostname="gen7@w1"),
        ev("task-started", T0 + 0.3, uuid="a", hostname=W2),
        ev("task-succeeded", T0 + 0.4, uuid="a", runtime=0.1, hostname=W2),
        ev("task-retried", T0 + 0.5, uuid="a", exception="IOError()"),
    ])
    assert counter(s, m.TASK_RETRIED, "app.flaky", "default", W1) == 1
    assert not s.tasks, "the finished task is not brought back"


# -- clocks -------------------------------------------------------------------------------------


def test_producer_clock_behind_is_corrected_with_host_offsets() -> None:
    """Producer clock 1 h slow: raw started - sent would be an hour; the offset fixes it."""
    s = State()
    skew = -3600.0
    online(s)
    # The producer's events carry timestamps an hour behind the receiver's clock.
    sent = ev("task-sent", T0 + skew, uuid="a", name="n", queue="q", retries=0, eta=None)
    s.ingest([sent], T0 + 0.01)
    s.ingest([ev("task-started", T0 + 2.0, uuid="a")], T0 + 2.01)
    count, total = hist(s, m.QUEUE_WAIT, "n", "q")
    assert count == 1
    assert 1.9 < total < 2.1
    assert s.clamped[m.QUEUE_WAIT.key] == 0


def test_worker_clock_behind_producer_clamps_at_zero_and_counts_it() -> None:
    s = State()
    # One event only from each host: offsets equal the transit, so the skew shows up raw.
    s.ingest([ev("task-sent", T0, uuid="a", name="n", queue="q", retries=0, eta=None)], T0)
    s.ingest([ev("task-started", T0 - 5, uuid="a")], T0 + 1)
    assert hist(s, m.QUEUE_WAIT, "n", "q")[0] == 1
    assert hist(s, m.QUEUE_WAIT, "n", "q")[1] >= 0


def test_prefetch_wait_uses_the_worker_clock_only() -> None:
    s = State()
    feed(s, [ev("task-received", T0 - 7200, uuid="a", name="n", retries=0, eta=None),
             ev("task-started", T0 - 7199, uuid="a")], lag=7200.0)
    settle(s)
    assert hist(s, m.PREFETCH_WAIT, "n", "unknown") == (1, 1.0)


def test_negative_prefetch_wait_is_clamped_and_counted() -> None:
    s = State()
    feed(s, [ev("task-received", T0, uuid="a", name="n", retries=0, eta=None),
             ev("task-started", T0 - 1, uuid="a")])
    settle(s)
    assert hist(s, m.PREFETCH_WAIT, "n", "unknown") == (1, 0.0)
    assert s.clamped[m.PREFETCH_WAIT.key] == 1


# -- workers ------------------------------------------------------------------------------------


def test_heartbeat_timeout_turns_worker_down_then_removes_its_series() -> None:
    s = State(StateConfig(worker_down_retention=600))
    online(s, t=T0)
    feed(s, lifecycle("a", T0))
    s.ingest([ev("worker-heartbeat", T0 + 1, freq=2.0, active=0, processed=1)], T0 + 1)
    s.tick(T0 + 4.9)
    assert s.workers[W1].up, "Celery's rule: alive until 2 x freq after the last heartbeat"
    s.tick(T0 + 5.1)
    assert not s.workers[W1].up
    s.tick(T0 + 5.1 + 599)
    assert W1 in s.workers, "the up=0 series stays for the retention"
    s.tick(T0 + 5.1 + 600)
    assert W1 not in s.workers
    assert counter(s, m.TASK_SUCCEEDED, "app.add", "default", W1) == 0, "its task series go too"
    assert counter(s, m.TASK_SENT, "app.add", "default") == 1, "producer-side series stay"


def test_configured_worker_timeout_overrides_celerys_rule() -> None:
    s = State(StateConfig(worker_timeout=30))
    online(s, t=T0)
    s.tick(T0 + 29)
    assert s.workers[W1].up
    s.tick(T0 + 31)
    assert not s.workers[W1].up


def test_worker_offline_is_down_at_once_and_drops_its_buffers() -> None:
    s = State()
    online(s, t=T0)
    feed(s, lifecycle("a", T0)[:2])
    assert s.workers[W1].prefetched == 1
    s.ingest([ev("worker-offline", T0 + 1)], T0 + 1)
    assert not s.workers[W1].up
    assert s.workers[W1].said_goodbye
    assert s.workers[W1].prefetched == 0
    # The redelivered message starts elsewhere; the gone worker's gauge must not go negative.
    feed(s, [ev("task-received", T0 + 2, uuid="a", retries=0, eta=None, hostname=W2),
             ev("task-started", T0 + 3, uuid="a", hostname=W2)])
    assert s.workers[W1].prefetched == 0
    assert s.workers[W2].prefetched == 0


def test_restarted_worker_with_the_same_name_comes_back_clean() -> None:
    s = State()
    online(s, t=T0)
    feed(s, lifecycle("a", T0)[:2])
    s.tick(T0 + 100)
    assert not s.workers[W1].up
    assert not s.workers[W1].said_goodbye, "silence is a crash, not a clean shutdown"
    online(s, t=T0 + 101)
    w = s.workers[W1]
    assert w.up and w.prefetched == 0
    feed(s, lifecycle("b", T0 + 102)[:2])
    assert w.prefetched == 1
    feed(s, [ev("task-started", T0 + 103, uuid="a")])  # old task from before the restart
    assert w.prefetched == 1
    # A deploy: goodbye, then the same name again. The goodbye is forgotten on return.
    s.ingest([ev("worker-offline", T0 + 104)], T0 + 104)
    assert not w.up and w.said_goodbye
    online(s, t=T0 + 105)
    assert w.up and not w.said_goodbye


def test_wakeup_heartbeat_without_active_does_not_read_as_idle() -> None:
    s = State()
    s.ingest([ev("worker-heartbeat", T0, freq=2.0, active=3, processed=10)], T0)
    s.ingest([ev("worker-heartbeat", T0 + 1, freq=5.0)], T0 + 1)
    assert s.workers[W1].active == 3


def test_worker_liveness_uses_the_receivers_clock() -> None:
    s = State()
    # Worker clock two hours fast: its timestamps say nothing about liveness.
    s.ingest([ev("worker-heartbeat", T0 + 7200, freq=2.0, active=0, processed=0)], T0)
    s.tick(T0 + 3)
    assert s.workers[W1].up


def test_task_events_missing_detected_from_processed_growth() -> None:
    s = State()
    for i in range(4):
        s.ingest([ev("worker-heartbeat", T0 + 2 * i, freq=2.0, active=1, processed=5 * i)],
                 T0 + 2 * i)
    assert s.workers[W1].events_missing
    assert s.task_events_missing
    feed(s, lifecycle("a", T0 + 8))
    s.ingest([ev("worker-heartbeat", T0 + 10, freq=2.0, active=0, processed=25)], T0 + 10)
    assert not s.task_events_missing


def test_idle_worker_is_not_reported_as_missing_events() -> None:
    s = State()
    for i in range(5):
        s.ingest([ev("worker-heartbeat", T0 + 2 * i, freq=2.0, active=0, processed=7)], T0 + 2 * i)
    assert not s.task_events_missing


def test_grouped_worker_label_keeps_series_while_any_member_lives() -> None:
    policy = LabelPolicy(worker_mode="regex", worker_regex=re.compile(r"@(\w+)-\d+$"))
    s = State(StateConfig(labels=policy, worker_down_retention=10))
    online(s, "celery@web-1", T0)
    online(s, "celery@web-2", T0)
    feed(s, lifecycle("a", T0, worker="celery@web-1"))
    assert counter(s, m.TASK_SUCCEEDED, "app.add", "default", "web") == 1
    s.ingest([ev("worker-offline", T0 + 1, hostname="celery@web-1")], T0 + 1)
    s.ingest([ev("worker-heartbeat", T0 + 20, hostname="celery@web-2", freq=2.0)], T0 + 20)
    s.tick(T0 + 20)
    assert "celery@web-1" not in s.workers
    assert counter(s, m.TASK_SUCCEEDED, "app.add", "default", "web") == 1


# -- bounds -------------------------------------------------------------------------------------


def test_in_flight_table_is_capped_and_evictions_counted() -> None:
    s = State(StateConfig(max_tasks=100))
    online(s)
    for i in range(250):
        feed(s, lifecycle(f"t{i}", T0 + i)[:2])  # sent + received, never finished
    assert len(s.tasks) == 100
    assert s.evicted["capacity"] == 150
    assert s.workers[W1].prefetched == 100, "evicted tasks leave the prefetch gauge"


def test_ttl_evicts_stale_tasks_but_not_ones_with_recent_events() -> None:
    s = State(StateConfig(task_ttl=60))
    feed(s, lifecycle("old", T0)[:2])
    feed(s, lifecycle("busy", T0)[:2])
    s.ingest([ev("task-started", T0 + 50, uuid="busy")], T0 + 50)
    s.tick(T0 + 70)
    assert "old" not in s.tasks
    assert "busy" in s.tasks
    assert s.evicted["ttl"] == 1


def test_series_cap_drops_and_counts_new_series_only() -> None:
    s = State(StateConfig(max_series=3))
    for i in range(5):
        feed(s, [ev("task-sent", T0, uuid=f"u{i}", name=f"n{i}", queue="q", retries=0, eta=None)])
    feed(s, [ev("task-sent", T0, uuid="again", name="n0", queue="q", retries=0, eta=None)])
    data = s.counters[m.TASK_SENT.key].data
    assert len(data) == 3
    assert data[("n0", "q")] == [2.0]
    assert {k: v for k, v in s.series_dropped.items() if v} == {m.TASK_SENT.key: 2}


def test_label_values_are_length_capped() -> None:
    s = State(StateConfig(labels=LabelPolicy(max_length=16)))
    feed(s, [ev("task-sent", T0, uuid="a", name="x" * 1000, queue="q" * 100, retries=0, eta=None)])
    (name, queue), = s.counters[m.TASK_SENT.key].data
    assert len(name) == 16 and len(queue) == 16


def test_include_and_exclude_task_patterns() -> None:
    policy = LabelPolicy(include_tasks=("app.*",), exclude_tasks=("app.internal.*",))
    s = State(StateConfig(labels=policy))
    feed(s, lifecycle("a", T0, name="app.add") + lifecycle("b", T0, name="other.add")
         + lifecycle("c", T0, name="app.internal.ping"))
    names = {k[0] for k in s.counters[m.TASK_SUCCEEDED.key].data}
    assert names == {"app.add"}
    assert s.workers[W1].prefetched == 0, "filtered tasks still keep the worker gauges right"


def test_worker_label_none_collapses_workers() -> None:
    s = State(StateConfig(labels=LabelPolicy(worker_mode="none")))
    feed(s, lifecycle("a", T0) + lifecycle("b", T0, worker=W2))
    assert counter(s, m.TASK_SUCCEEDED, "app.add", "default", "") == 2


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("event", "reason"), [
    ("not a dict", "not_an_object"),
    (["list"], "not_an_object"),
    ({"timestamp": T0}, "missing_type"),
    ({"type": 7, "timestamp": T0}, "missing_type"),
    ({"type": "task-started", "uuid": "a", "hostname": W1}, "bad_timestamp"),
    ({"type": "task-started", "uuid": "a", "hostname": W1, "timestamp": "soon"}, "bad_timestamp"),
    ({"type": "task-started", "hostname": W1, "timestamp": T0}, "bad_field"),
    ({"type": "task-started", "uuid": ["a"], "hostname": W1, "timestamp": T0}, "bad_field"),
    ({"type": "task-started", "uuid": "a", "hostname": 5, "timestamp": T0}, "bad_field"),
    ({"type": "task-succeeded", "uuid": "a", "hostname": W1, "timestamp": T0,
      "runtime": "fast"}, "bad_field"),
    ({"type": "worker-heartbeat", "hostname": None, "timestamp": T0}, "bad_field"),
])
def test_malformed_events_are_counted_and_dropped(event: object, reason: str) -> None:
    s = State()
    s.ingest([event, ev("task-sent", T0, uuid="ok", name="n", queue="q", retries=0, eta=None)], T0)
    assert {k: v for k, v in s.invalid.items() if v} == {reason: 1}
    assert counter(s, m.TASK_SENT, "n", "q") == 1, "the good event in the batch still counts"


def test_unknown_event_types_are_counted_with_a_bounded_label() -> None:
    s = State()
    for i in range(200):
        s.ingest([{"type": f"custom-{i}", "timestamp": T0}], T0)
    assert len(s.event_types) <= 65
    assert sum(s.event_types.values()) == 200


def test_same_events_same_numbers() -> None:
    events = []
    for i in range(50):
        events += lifecycle(f"t{i}", T0 + i, outcome="task-failed" if i % 7 == 0 else
                            "task-succeeded", worker=W1 if i % 2 else W2)

    def run() -> tuple:
        s = State()
        feed(s, events, lag=0.01)
        return ({k: dict(v.data) for k, v in s.counters.items()},
                {k: dict(v.data) for k, v in s.histograms.items()})

    assert run() == run()

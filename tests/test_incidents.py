"""Incident signals (issue 12) from scripted events: running, interrupted, waiting, stalled
consumers, last sent. Events in, numbers out; no broker (tests/integration has the proof on
real workers)."""

from __future__ import annotations

import pytest

from celery_events_exporter import metrics as m
from celery_events_exporter.probes import ProbeResults
from celery_events_exporter.state import State, StateConfig
from tests.test_state import T0, W1, W2, counter, ev, feed, lifecycle, online


def running(state: State, mono: float) -> dict[tuple[str, str], tuple[int, float]]:
    return state.running.snapshot(mono)


def start(uuid: str, t: float, name: str = "app.long", queue: str = "default",
          worker: str = W1) -> list[dict]:
    return lifecycle(uuid, t, name=name, queue=queue, worker=worker)[:3]


# -- running and the oldest running age ------------------------------------------------------

def test_started_tasks_count_as_running_and_the_oldest_ages_on_the_monotonic_clock() -> None:
    state = State()
    online(state, W1, T0)
    feed(state, start("a", T0))  # started at T0 + 0.3
    feed(state, start("b", T0 + 10))  # started at T0 + 10.3
    feed(state, start("c", T0 + 5, name="app.other"))
    snap = running(state, T0 + 100.3)
    assert snap[("app.long", "default")] == (2, 100.0)
    assert snap[("app.other", "default")] == (1, 95.0)


def test_age_counts_from_the_offset_corrected_start_not_the_receive_time() -> None:
    """The worker's clock runs 30 s behind; its started event arrives 20 s late (a backlog
    in the event stream). The age is from when the worker started the task, on our clock."""
    state = State()
    skew = 30.0
    for i in range(3):  # heartbeats arriving at once teach the offset
        t = T0 + i
        state.ingest([ev("worker-heartbeat", t - skew, freq=2.0)], t)
    t_start = T0 + 5  # true start, exporter's clock
    state.ingest([ev("task-started", t_start - skew, uuid="a", name="app.long")],
                 t_start + 20, mono=1000.0)
    # Received at mono 1000, it had started 20 s before.
    assert running(state, 1010.0)[("app.long", "unknown")] == (1, pytest.approx(30.0))


def test_terminal_retry_and_cancel_end_running() -> None:
    state = State()
    online(state, W1, T0)
    for uuid in "abcd":
        feed(state, start(uuid, T0))
    feed(state, [ev("task-succeeded", T0 + 1, uuid="a", runtime=0.7)])
    feed(state, [ev("task-failed", T0 + 1, uuid="b", exception="ValueError()")])
    feed(state, [ev("task-retried", T0 + 1, uuid="c")])
    assert running(state, T0 + 2)[("app.long", "default")] == (1, pytest.approx(1.7))
    feed(state, [ev("task-cancelled", T0 + 2, uuid="d")])
    assert running(state, T0 + 3) == {}
    assert state.running.runs == {}, "ended entries are dropped, not kept"


def test_long_task_stays_running_past_the_ttl_while_its_worker_heartbeats() -> None:
    state = State(StateConfig(task_ttl=60))
    online(state, W1, T0)
    feed(state, start("a", T0))
    for t in range(1, 200, 2):
        state.ingest([ev("worker-heartbeat", T0 + t, freq=2.0)], T0 + t)
        state.tick(T0 + t)
    assert running(state, T0 + 199.3)[("app.long", "default")] == (1, 199.0)


# -- interrupted -------------------------------------------------------------------------------

def interrupted(state: State, name: str = "app.long", queue: str = "default",
                worker: str = W1) -> float:
    return counter(state, m.TASK_INTERRUPTED, name, queue, worker)


def test_a_worker_that_times_out_mid_task_interrupts_it_under_its_name_and_queue() -> None:
    state = State(StateConfig(worker_timeout=10))
    online(state, W1, T0)
    online(state, W2, T0)
    feed(state, start("a", T0, queue="reports"))
    feed(state, start("b", T0, worker=W2))
    feed(state, lifecycle("done", T0))  # finished: not interrupted
    state.ingest([ev("worker-heartbeat", T0 + 8, hostname=W2, freq=2.0)], T0 + 8)
    state.tick(T0 + 12)  # W1 silent for 12 s: down; W2 heard at +8: up
    assert interrupted(state, queue="reports") == 1
    assert interrupted(state, "app.add") == 0
    assert interrupted(state, worker=W2) == 0
    assert ("app.long", "reports") not in running(state, T0 + 12)
    assert running(state, T0 + 12)[("app.long", "default")][0] == 1
    state.tick(T0 + 30)  # still down: counted once
    assert interrupted(state, queue="reports") == 1


def test_worker_offline_and_a_quick_restart_interrupt_what_ran() -> None:
    state = State()
    online(state, W1, T0)
    feed(state, start("a", T0))
    state.ingest([ev("worker-offline", T0 + 1)], T0 + 1)
    assert interrupted(state) == 1
    online(state, W1, T0 + 2)
    feed(state, start("b", T0 + 3))
    online(state, W1, T0 + 4)  # killed and restarted faster than the heartbeat timeout
    assert interrupted(state) == 2
    assert running(state, T0 + 5) == {}


def test_retried_or_finished_tasks_are_not_interrupted_by_a_later_crash() -> None:
    state = State(StateConfig(worker_timeout=10))
    online(state, W1, T0)
    feed(state, start("a", T0))
    feed(state, start("b", T0))
    feed(state, [ev("task-retried", T0 + 1, uuid="a")])
    feed(state, [ev("task-succeeded", T0 + 1, uuid="b", runtime=0.7)])
    state.tick(T0 + 20)
    assert interrupted(state) == 0


def test_redelivered_task_running_elsewhere_is_interrupted_only_on_its_current_worker() -> None:
    """acks_late: W1 dies, the broker hands the message to W2, which starts it again."""
    state = State(StateConfig(worker_timeout=10))
    online(state, W1, T0)
    online(state, W2, T0)
    feed(state, start("a", T0))
    state.ingest([ev("worker-heartbeat", T0 + 9, hostname=W2, freq=2.0)], T0 + 9)
    state.tick(T0 + 12)
    assert interrupted(state) == 1
    feed(state, [ev("task-received", T0 + 13, uuid="a", name="app.long", hostname=W2),
                 ev("task-started", T0 + 13.5, uuid="a", hostname=W2)])
    assert running(state, T0 + 14)[("app.long", "default")] == (1, pytest.approx(0.5))
    feed(state, [ev("task-succeeded", T0 + 15, uuid="a", runtime=1.5, hostname=W2)])
    assert interrupted(state, worker=W2) == 0
    assert running(state, T0 + 16) == {}


def test_scrape_shows_running_age_and_interrupted() -> None:
    from celery_events_exporter.pipeline import Pipeline
    from tests.test_collector import registry_for

    state = State(StateConfig(worker_timeout=10))
    online(state, W1, T0)
    feed(state, start("a", T0))
    state.tick(T0 + 5.3)
    registry = registry_for(Pipeline(state), ProbeResults())
    get = registry.get_sample_value
    labels = {"name": "app.long", "queue": "default"}
    assert get("celery_task_running", labels) == 1
    assert get("celery_task_oldest_running_age_seconds", labels) == pytest.approx(5.0)
    state.tick(T0 + 20)
    assert get("celery_task_running", labels) is None
    # (The scrape above showed the new counter at 0, as every new series is shown first.)
    assert get("celery_task_interrupted_total", {**labels, "worker": W1}) == 1


# -- oldest waiting --------------------------------------------------------------------------

def sent(uuid: str, t: float, queue: str = "default", **fields: object) -> dict:
    return ev("task-sent", t, uuid=uuid, name="app.add", queue=queue, **{"retries": 0, **fields})


def waiting(state: State, mono: float) -> dict[str, float]:
    return state.waiting.snapshot(mono)


def test_oldest_waiting_is_the_oldest_published_and_not_received() -> None:
    state = State()
    feed(state, [sent("a", T0), sent("b", T0 + 10), sent("c", T0 + 20, queue="reports")])
    assert waiting(state, T0 + 60) == {"default": 60.0, "reports": 40.0}
    feed(state, [ev("task-received", T0 + 61, uuid="a", name="app.add")])
    assert waiting(state, T0 + 62)["default"] == 52.0
    # b is started without its received event having arrived: gone all the same.
    feed(state, [ev("task-started", T0 + 63, uuid="b")])
    assert waiting(state, T0 + 64)["default"] == 0.0
    # c ends (revoked before any worker reported receiving it).
    feed(state, [ev("task-revoked", T0 + 65, uuid="c")])
    assert waiting(state, T0 + 66)["reports"] == 0.0
    assert state.waiting.entries == 0, "received tasks leave the heaps"


def test_received_out_of_order_keeps_the_oldest_still_waiting() -> None:
    state = State()
    feed(state, [sent(u, T0 + i) for i, u in enumerate("abcde")])
    feed(state, [ev("task-received", T0 + 10, uuid=u, name="app.add") for u in "bcd"])
    assert waiting(state, T0 + 20)["default"] == 20.0  # a
    feed(state, [ev("task-received", T0 + 21, uuid="a", name="app.add")])
    assert waiting(state, T0 + 30)["default"] == 26.0  # e, sent at T0 + 4


def test_eta_tasks_wait_from_their_eta() -> None:
    from datetime import UTC, datetime

    state = State()
    eta = datetime.fromtimestamp(T0 + 100, UTC).isoformat()
    feed(state, [sent("later", T0, eta=eta)])
    assert waiting(state, T0 + 50)["default"] == 0.0, "not due yet"
    assert waiting(state, T0 + 130)["default"] == 30.0


def test_a_retry_waits_from_its_own_publish() -> None:
    state = State()
    feed(state, lifecycle("a", T0)[:3])
    feed(state, [ev("task-retried", T0 + 1, uuid="a"),
                 sent("a", T0 + 2, retries=1)])
    assert waiting(state, T0 + 12)["default"] == 10.0


def test_a_backlog_beyond_the_task_table_keeps_its_oldest() -> None:
    """The LRU table evicts the oldest under a backlog; the waiting room must not."""
    state = State(StateConfig(max_tasks=100))
    feed(state, [sent(f"t{i}", T0 + i) for i in range(150)])
    assert state.evicted["capacity"] == 50
    assert waiting(state, T0 + 200)["default"] == 200.0
    # Past its own cap the earliest untracked publish stands in once the tracked drain.
    feed(state, [ev("task-received", T0 + 201, uuid=f"t{i}", name="app.add")
                 for i in range(100)])
    assert waiting(state, T0 + 210)["default"] == 110.0  # t100, untracked


def test_stale_heap_entries_are_bounded() -> None:
    state = State(StateConfig(max_tasks=100))
    # Received out of publish order forever: the oldest stays, the rest go stale.
    feed(state, [sent("first", T0)])
    for i in range(5000):
        t = T0 + 1 + i * 0.01
        feed(state, [sent(f"t{i}", t)])
        if i % 3 == 0:  # a third received later than the next publish: they reach a heap
            state.tick(t)
        feed(state, [ev("task-received", t, uuid=f"t{i}", name="app.add")])
        state.tick(t)  # the pipeline ticks about once a second
        assert len(state.waiting.fresh) == 0
        # At most two live entries (first, and t{i} at its push), twice that plus the slack.
        assert state.waiting.entries <= 2 * 2 + 1024
    assert waiting(state, T0 + 100)["default"] == 100.0


def test_an_empty_queue_at_the_probe_clears_what_was_published_before() -> None:
    state = State()
    feed(state, [sent("lost-received", T0), sent("after-probe", T0 + 10)])
    state.waiting.drained("default", T0 + 5)
    assert waiting(state, T0 + 20)["default"] == 10.0


def test_scrape_shows_0_for_a_queue_the_probe_finds_empty() -> None:
    from celery_events_exporter.pipeline import Pipeline
    from tests.test_collector import registry_for

    state = State()
    feed(state, [sent("a", T0), sent("b", T0 + 1, queue="reports")])
    state.tick(T0 + 30)
    results = ProbeResults()
    results.queues.length = {"default": 0.0, "reports": 1.0}
    results.register("redis_queues")
    results.status["redis_queues"].last_run = T0 + 25
    registry = registry_for(Pipeline(state), results)
    get = registry.get_sample_value
    assert get("celery_queue_oldest_waiting_age_seconds", {"queue": "default"}) == 0
    assert get("celery_queue_oldest_waiting_age_seconds", {"queue": "reports"}) == 29
    assert "a" not in state.waiting.since, "the empty probe forgot what was sent before it"


# -- stalled consumers and the dead-man's switch ---------------------------------------------

def test_last_received_stands_still_while_a_ghost_heartbeats() -> None:
    state = State()
    online(state, W1, T0)
    assert state.workers[W1].last_received == T0, "online: a new consumer, nothing yet"
    feed(state, lifecycle("a", T0 + 5))
    assert state.workers[W1].last_received == T0 + 5.1
    for t in range(10, 100, 2):  # heartbeats go on; nothing is received any more
        state.ingest([ev("worker-heartbeat", T0 + t, freq=2.0)], T0 + t)
    assert state.workers[W1].last_received == T0 + 5.1
    online(state, W1, T0 + 200)  # restarted: counts from its new start
    assert state.workers[W1].last_received == T0 + 200


def test_a_worker_first_heard_by_heartbeat_counts_from_then() -> None:
    state = State()
    state.ingest([ev("worker-heartbeat", T0, freq=2.0)], T0)
    state.ingest([ev("worker-heartbeat", T0 + 2, freq=2.0)], T0 + 2)
    assert state.workers[W1].last_received == T0


def test_last_sent_per_task_name_is_capped() -> None:
    state = State(StateConfig(max_series=2))
    feed(state, lifecycle("a", T0) + lifecycle("b", T0 + 60))
    feed(state, lifecycle("c", T0, name="app.nightly"))
    feed(state, lifecycle("d", T0, name="app.third"))
    assert state.last_sent == {"app.add": T0 + 60, "app.nightly": T0}


def test_scrape_shows_ghost_signals_and_last_sent() -> None:
    from celery_events_exporter.pipeline import Pipeline
    from celery_events_exporter.state import apply_worker_probe
    from tests.test_collector import registry_for

    state = State()
    online(state, W1, T0)
    apply_worker_probe(state, W1, 4, 4, frozenset({"default", "reports"}))
    feed(state, lifecycle("a", T0 + 5))
    registry = registry_for(Pipeline(state), ProbeResults())
    get = registry.get_sample_value
    assert get("celery_worker_last_task_received_timestamp_seconds", {"worker": W1}) == T0 + 5.1
    assert get("celery_worker_queue_info", {"worker": W1, "queue": "reports"}) == 1
    assert get("celery_worker_queue_info", {"worker": W1, "queue": "default"}) == 1
    assert get("celery_task_last_sent_timestamp_seconds", {"name": "app.add"}) == T0 + 5


def test_a_task_revoked_before_any_worker_received_it_is_not_waiting() -> None:
    state = State()
    feed(state, [sent("a", T0), ev("task-revoked", T0 + 1, uuid="a")])
    # Both arrived within one tick: the publish is looked at after the task ended.
    assert waiting(state, T0 + 60) == {}
    assert "a" not in state.waiting.since

"""The event state's rooms (exporter/state/*), line by line: what scripts/mutation found
unprotected once it measured the package module by module.

Where a room's behaviour reaches the output only through State, events go in through
`State.ingest`/`tick` and the numbers are read where the collector reads them; where a
room's rule is finer than the events can show at once (the clock offset estimator's
windows), the room is driven directly, with the same calls State makes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from celery_events_exporter import metrics as m
from celery_events_exporter.labels import Labeler, LabelPolicy
from celery_events_exporter.state import State, StateConfig
from celery_events_exporter.state.clocks import OFFSET_WINDOW_SECONDS, Clocks
from celery_events_exporter.state.series import Series, Stamp
from celery_events_exporter.state.waiting import Waiting
from tests.test_state import (
    PRODUCER,
    T0,
    W1,
    W2,
    counter,
    ev,
    feed,
    hist,
    lifecycle,
    online,
    settle,
)

# -- clocks -------------------------------------------------------------------------------


def clocks(max_hosts: int = 100) -> Clocks:
    return Clocks(Labeler(LabelPolicy()), max_hosts)


def delays(c: Clocks, host: str, *values: float, now: float = T0) -> list[float]:
    """Feed samples received at `now` delayed by each value; the offsets returned."""
    return [c.observe(host, now - d, now) for d in values]


def test_one_sample_alone_is_the_hosts_estimate() -> None:
    s = State()
    s.ingest([ev("worker-heartbeat", T0 - 7.0, freq=2.0)], T0)
    assert s.clocks.estimates() == {"w1": 7.0}


def test_the_estimate_is_the_second_smallest_delay_and_follows_new_lows() -> None:
    c = clocks()
    # 5 alone; 2 is a new low (5 becomes second); 3 beats 5 as second; 9 changes nothing.
    assert delays(c, "celery@h", 5.0, 2.0, 3.0, 9.0) == [5.0, 5.0, 3.0, 3.0]
    assert c.estimates() == {"h": 3.0}


def test_the_host_is_what_follows_the_first_at_sign() -> None:
    """Celery's nodesplit: `name@host` splits at the first @, the host keeps any other."""
    c = clocks()
    delays(c, "worker@host@x", 1.0)
    assert c.estimates() == {"host@x": 1.0}


def test_a_sample_exactly_at_the_future_tolerance_is_used() -> None:
    c = clocks()
    assert delays(c, "celery@h", -1.0) == [-1.0]
    assert c.estimates() == {"h": -1.0}
    assert delays(c, "celery@g", -1.5) == [0.0], "beyond the tolerance: not a transit"
    assert c.estimates() == {"h": -1.0}


def test_a_sample_from_the_future_uses_the_offset_known_so_far() -> None:
    """A producer's clock reads 5 s behind ours; then it is stepped 7 s forward and its
    next task-sent is stamped 2 s in the future. That sample is not used, but the offset
    known so far still dates the publish (T0 + 12 + 5); the worker's clock is ours."""
    s = State()
    for i in range(3):
        s.ingest([ev("task-sent", T0 + i - 5.0, uuid=f"x{i}", name="n", queue="q",
                     retries=0, eta=None)], T0 + i)
    s.ingest([ev("task-sent", T0 + 12.0, uuid="a", name="n", queue="q", retries=0,
                 eta=None)], T0 + 10)
    s.ingest([ev("task-started", T0 + 19.0, uuid="a")], T0 + 19)
    assert hist(s, m.QUEUE_WAIT, "n", "q") == (1, pytest.approx(2.0))


def test_a_first_sample_from_the_future_means_no_offset() -> None:
    """Nothing known of a host whose first event is stamped 10 s ahead: its times are
    taken as they are (offset 0), neither dropped nor shifted."""
    s = State()
    s.ingest([ev("task-sent", T0 + 10.0, uuid="a", name="n", queue="q", retries=0,
                 eta=None)], T0)
    s.ingest([ev("task-started", T0 + 12.0, uuid="a")], T0 + 12)
    assert hist(s, m.QUEUE_WAIT, "n", "q") == (1, pytest.approx(2.0))
    assert not any(s.invalid.values())


def test_hosts_beyond_the_cap_get_no_memory() -> None:
    """At the cap a new host's offset is its latest sample alone: nothing is stored."""
    c = clocks(max_hosts=1)
    delays(c, "celery@a", 1.0)
    assert delays(c, "celery@b", 2.0, 3.0, 10.0) == [2.0, 3.0, 10.0]
    assert c.estimates() == {"a": 1.0}


def test_the_previous_window_counts_with_its_second_smallest() -> None:
    c = clocks()
    delays(c, "celery@h", 2.0, 5.0)
    c.roll(OFFSET_WINDOW_SECONDS)
    assert delays(c, "celery@h", 10.0) == [5.0]
    assert delays(c, "celery@h", 4.0) == [5.0], "10 and 4: the current window's is 10"


def test_windows_roll_every_window_seconds_from_the_start() -> None:
    c = clocks()
    delays(c, "celery@h", 2.0)
    c.roll(OFFSET_WINDOW_SECONDS - 1)
    assert c.offsets, "not a window yet"
    c.roll(OFFSET_WINDOW_SECONDS)
    assert not c.offsets and c.offsets_prev
    assert c.estimates() == {"h": 2.0}
    c.roll(2 * OFFSET_WINDOW_SECONDS)
    assert c.estimates() == {}, "not heard from for two windows: forgotten"


def test_estimates_take_the_lower_of_both_windows() -> None:
    c = clocks()
    delays(c, "celery@low-before", 5.0)
    delays(c, "celery@low-now", 2.0)
    c.roll(OFFSET_WINDOW_SECONDS)
    delays(c, "celery@low-before", 9.0)
    delays(c, "celery@low-now", 1.0)
    assert c.estimates() == {"low-before": 5.0, "low-now": 1.0}


def test_at_the_cap_known_hosts_still_take_their_lower_estimate() -> None:
    """The current window fills the cap (b, y); the previous one has x (no room) before b,
    whose lower estimate there must still win."""
    c = clocks(max_hosts=2)
    delays(c, "celery@x", 5.0)
    delays(c, "celery@b", 1.0)
    c.roll(OFFSET_WINDOW_SECONDS)
    delays(c, "celery@b", 4.0)
    delays(c, "celery@y", 6.0)
    assert c.estimates() == {"b": 1.0, "y": 6.0}


# -- handlers: the batch loop -------------------------------------------------------------


def test_event_types_are_counted_per_event() -> None:
    s = State()
    s.ingest([ev("worker-heartbeat", T0), ev("worker-heartbeat", T0), ev("x-custom", T0)], T0)
    assert s.event_types == {"worker-heartbeat": 2, "x-custom": 1}


def test_an_unhashable_type_is_a_missing_type_and_the_batch_goes_on() -> None:
    s = State()
    s.ingest([{"type": ["task-sent"], "timestamp": T0}, ev("worker-heartbeat", T0)], T0)
    assert s.invalid["missing_type"] == 1
    assert s.event_types == {"worker-heartbeat": 1}


def test_event_type_labels_are_kept_up_to_64_characters() -> None:
    s = State()
    s.ingest([ev("x" * 64, T0), ev("y" * 65, T0)], T0)
    assert s.event_types == {"x" * 64: 1, "other": 1}


def test_an_unhandled_or_out_of_range_event_does_not_end_the_batch() -> None:
    s = State()
    s.ingest([ev("x-custom", T0), ev("worker-heartbeat", T0 + 1e6),
              ev("worker-heartbeat", T0 - 2.0)], T0)
    assert s.invalid["timestamp_out_of_range"] == 1
    assert s.clocks.estimates() == {"w1": 2.0}


def test_integer_timestamps_are_handled_like_floats() -> None:
    s = State()
    s.ingest([ev("worker-heartbeat", int(T0) - 3)], T0)
    assert s.clocks.estimates() == {"w1": 3.0}
    assert s.lag == 3.0
    assert not any(s.invalid.values())


@pytest.mark.parametrize("ts", [0.0, 0.5, T0 + 86_400.0])
def test_timestamps_from_the_epoch_to_a_day_ahead_are_in_range(ts: float) -> None:
    """A host that booted in 1970 (timestamp 0 and up) and one a full day ahead still count;
    offsets correct their clocks."""
    s = State()
    s.ingest([ev("worker-heartbeat", ts)], T0)
    assert W1 in s.workers
    assert not any(s.invalid.values())


def test_last_event_and_lag_come_from_the_last_batch() -> None:
    s = State()
    assert (s.last_event, s.lag) == (0.0, 0.0), "nothing received yet"
    s.ingest([ev("worker-heartbeat", T0 - 5.0), ev("worker-heartbeat", T0 - 2.0)], T0)
    assert (s.last_event, s.lag) == (T0, 2.0)
    # A batch whose last event is rejected leaves the lag as it was.
    s.ingest([ev("worker-heartbeat", T0 + 8.0), ev("worker-heartbeat", "soon")], T0 + 10)
    assert (s.last_event, s.lag) == (T0 + 10, 2.0)
    assert s.invalid["bad_timestamp"] == 1


def test_invalid_events_add_up() -> None:
    s = State()
    s.ingest([ev("worker-heartbeat", "x"), ev("worker-heartbeat", None)], T0)
    s.invalid_event("bad_field", 3)
    s.invalid_event("bad_field")
    assert (s.invalid["bad_timestamp"], s.invalid["bad_field"]) == (2, 4)


# -- handlers: task events ----------------------------------------------------------------


def beat(s: State, t: float, processed: int, worker: str = W1) -> None:
    s.ingest([ev("worker-heartbeat", t, hostname=worker, freq=2.0, active=0,
                 processed=processed)], t)


TASK_EVENTS = {
    "task-received": {"name": "app.add", "retries": 0, "eta": None},
    "task-started": {},
    "task-succeeded": {"runtime": 0.1},
    "task-failed": {"exception": "ValueError()"},
    "task-retried": {},
    "task-rejected": {},
    "task-revoked": {},
    "task-cancelled": {},
    "duplicate task-started": {},
}


@pytest.mark.parametrize("kind", list(TASK_EVENTS))
def test_any_task_event_shows_the_workers_task_events_are_on(kind: str) -> None:
    """Processed counts rise between heartbeats while only this kind of event arrives: the
    events are on (no CeleryTaskEventsMissing); each event refreshes the worker's last seen."""
    s = State()
    online(s, W1, T0)
    for i in range(1, 4):
        feed(s, lifecycle(f"d{i}", T0))  # for the duplicate task-started: finished tasks
    beat(s, T0 + 1, processed=3)
    for i in range(1, 4):
        t = T0 + 2 * i
        uuid = f"d{i}" if kind.startswith("duplicate") else f"n{i}"
        event = ev(kind.split()[-1], t, uuid=uuid, **TASK_EVENTS[kind])
        s.ingest([event], t + 0.5)
        assert s.workers[W1].last_seen == t + 0.5
        beat(s, t + 1, processed=3 + i)
    assert not s.workers[W1].events_missing
    assert not s.task_events_missing


def exemplar_ids(s: State, metric: m.Metric, *key: str) -> set[str]:
    return {e[0] for e in s.histograms[metric.key].exemplars[key] if e is not None}


def test_exemplars_name_the_task_observed() -> None:
    s = State()
    feed(s, lifecycle("ok", T0))
    feed(s, lifecycle("bad", T0, name="app.fail", outcome="task-failed"))
    # Started before its task-sent arrives: the queue wait is observed at task-sent.
    sent, received, started, done = lifecycle("late", T0, name="app.late")
    feed(s, [received, started, sent, done])
    for name, uuid in (("app.add", "ok"), ("app.fail", "bad"), ("app.late", "late")):
        for metric in (m.QUEUE_WAIT, m.PREFETCH_WAIT, m.RUNTIME):
            assert exemplar_ids(s, metric, name, "default") == {uuid}, (metric.key, name)


def test_a_prefetch_wait_of_zero_is_not_clamped_and_clamps_add_up() -> None:
    s = State()
    feed(s, [ev("task-sent", T0, uuid="z", name="n", queue="q", retries=0, eta=None),
             ev("task-received", T0, uuid="z", name="n", retries=0, eta=None),
             ev("task-started", T0, uuid="z")])
    assert hist(s, m.PREFETCH_WAIT, "n", "q") == (1, 0.0)
    assert s.clamped == {m.QUEUE_WAIT.key: 0, m.PREFETCH_WAIT.key: 0}
    for uuid in ("a", "b"):
        feed(s, [ev("task-sent", T0, uuid=uuid, name="n", queue="q", retries=0, eta=None),
                 ev("task-received", T0 + 2, uuid=uuid, name="n", retries=0, eta=None),
                 ev("task-started", T0 + 1, uuid=uuid)])
    assert s.clamped[m.PREFETCH_WAIT.key] == 2


def test_a_wait_of_exactly_the_longest_runtime_is_observed() -> None:
    from celery_events_exporter.state.handlers import MAX_RUNTIME
    s = State()
    feed(s, [ev("task-sent", T0, uuid="a", name="n", queue="q", retries=0, eta=None),
             ev("task-received", T0 - MAX_RUNTIME, uuid="a", name="n", retries=0, eta=None)])
    s.ingest([ev("task-started", T0, uuid="a")], T0)
    assert hist(s, m.PREFETCH_WAIT, "n", "q") == (1, MAX_RUNTIME)
    assert not any(s.invalid.values())


def late_sent_wait(s: State, uuid: str, started: float, sent: float) -> None:
    """task-started, then its task-sent; both hosts' clocks are ours, no transit delay."""
    s.ingest([ev("task-started", started, uuid=uuid)], started)
    s.ingest([ev("task-sent", sent, uuid=uuid, name="n", queue="q", retries=0, eta=None)], sent)


def test_queue_waits_known_at_a_late_task_sent_clamp_only_below_zero() -> None:
    s = State()
    late_sent_wait(s, "zero", T0, T0)
    late_sent_wait(s, "half", T0 + 10.5, T0 + 10)
    assert hist(s, m.QUEUE_WAIT, "n", "q") == (2, 0.5)
    assert s.clamped[m.QUEUE_WAIT.key] == 0
    late_sent_wait(s, "neg1", T0 + 20, T0 + 21)
    late_sent_wait(s, "neg2", T0 + 30, T0 + 31)
    assert s.clamped[m.QUEUE_WAIT.key] == 2
    assert hist(s, m.QUEUE_WAIT, "n", "q") == (4, 0.5)


def test_a_repeated_task_sent_after_the_late_wait_observes_nothing_more() -> None:
    s = State()
    late_sent_wait(s, "a", T0 + 1, T0)
    s.ingest([ev("task-sent", T0, uuid="a", name="n", queue="q", retries=0, eta=None)], T0)
    assert hist(s, m.QUEUE_WAIT, "n", "q") == (1, 1.0)
    assert not any(s.invalid.values())


@pytest.mark.parametrize(("runtime", "observed"), [
    (2, 2.0), (0, 0.0), (366 * 86_400, 366 * 86_400.0), (0.0, 0.0)])
def test_runtimes_from_zero_to_a_year_are_observed_ints_as_floats(runtime: object,
                                                                  observed: float) -> None:
    s = State()
    feed(s, lifecycle("a", T0)[:3])
    s.ingest([ev("task-succeeded", T0 + 1, uuid="a", runtime=runtime)], T0 + 1)
    count, total = hist(s, m.RUNTIME, "app.add", "default")
    assert (count, total, type(total)) == (1, observed, float)
    assert not any(s.invalid.values())


def test_a_success_without_runtime_is_timed_from_its_start() -> None:
    s = State()
    feed(s, lifecycle("a", T0)[:3])  # started at T0 + 0.3
    s.ingest([ev("task-succeeded", T0 + 2.3, uuid="a")], T0 + 2.3)
    assert hist(s, m.RUNTIME, "app.add", "default") == (1, pytest.approx(2.0))
    s.ingest([ev("task-succeeded", T0 + 3, uuid="never-started")], T0 + 3)
    assert hist(s, m.RUNTIME, "app.add", "default") == (1, pytest.approx(2.0))


@pytest.mark.parametrize(("kind", "fields", "tail"), [
    ("task-retried", {}, ()),
    ("task-rejected", {"requeue": False}, ()),
    ("task-revoked", {}, ("revoked",)),
])
def test_a_worker_event_before_task_sent_counts_under_the_queue_task_sent_names(
        kind: str, fields: dict, tail: tuple[str, ...]) -> None:
    """The worker's event (no name, no queue in it) waits for the task's task-sent and is
    counted the moment it arrives, under its name and queue."""
    metric = {"task-retried": m.TASK_RETRIED, "task-rejected": m.TASK_REJECTED,
              "task-revoked": m.TASK_REVOKED}[kind]
    s = State()
    online(s, W1, T0)
    s.ingest([ev(kind, T0 + 1, uuid="a", **fields)], T0 + 1)
    assert counter(s, metric, "app.add", "q", W1, *tail) == 0
    s.ingest([ev("task-sent", T0, uuid="a", hostname=PRODUCER, name="app.add", queue="q",
                 retries=0, eta=None)], T0 + 1)
    assert counter(s, metric, "app.add", "q", W1, *tail) == 1


def test_reject_without_requeue_of_a_tracked_task_ends_it() -> None:
    s = State()
    feed(s, lifecycle("a", T0)[:2])
    assert s.workers[W1].prefetched == 1
    feed(s, [ev("task-rejected", T0 + 1, uuid="a", requeue=False)])
    assert "a" not in s.tasks and s.workers[W1].prefetched == 0
    feed(s, [ev("task-rejected", T0 + 2, uuid="a", requeue=False)])
    assert counter(s, m.TASK_REJECTED, "app.add", "default", W1) == 1
    assert s.duplicates["task-rejected"] == 1


def test_a_requeued_started_task_is_not_running_any_more() -> None:
    s = State()
    feed(s, lifecycle("a", T0)[:3])
    assert s.running.snapshot(T0 + 1) == {("app.add", "default"): (1, pytest.approx(0.7))}
    feed(s, [ev("task-rejected", T0 + 1, uuid="a", requeue=True)])
    assert s.running.snapshot(T0 + 2) == {}
    assert "a" in s.tasks


def test_fail_then_reject_before_task_sent_count_both_under_its_queue() -> None:
    """Reject(requeue=False) ends a task twice; here both ends arrive before task-sent."""
    s = State()
    online(s, W1, T0)
    _, received, started, failed = lifecycle("a", T0, outcome="task-failed")
    feed(s, [received, started, failed, ev("task-rejected", T0 + 1, uuid="a", requeue=False)])
    s.ingest([ev("task-sent", T0, uuid="a", hostname=PRODUCER, name="app.add", queue="q",
                 retries=0, eta=None)], T0 + 1)
    key = ("app.add", "q", W1)
    assert counter(s, m.TASK_RECEIVED, *key) == 1
    assert counter(s, m.TASK_FAILED, *key, "ValueError") == 1
    assert counter(s, m.TASK_REJECTED, *key) == 1


@pytest.mark.parametrize("same_ts", ["received", "started"])
def test_a_retry_stamped_with_its_attempts_own_time_ends_that_attempt(same_ts: str) -> None:
    s = State()
    sent, received, started, _ = lifecycle("a", T0)
    events = [sent, received] if same_ts == "received" else [sent, received, started]
    feed(s, events)
    feed(s, [ev("task-retried", events[-1]["timestamp"], uuid="a")])
    assert s.workers[W1].prefetched == 0
    assert s.running.snapshot(T0 + 5) == {}


def test_a_late_retry_leaves_the_next_attempt_on_the_same_worker_alone() -> None:
    s = State()
    feed(s, lifecycle("a", T0)[:2])
    feed(s, [ev("task-received", T0 + 5, uuid="a", name="app.add", retries=1, eta=None)])
    feed(s, [ev("task-retried", T0 + 3, uuid="a")])  # the first attempt's, late
    assert s.workers[W1].prefetched == 1


def test_a_retry_from_another_worker_leaves_this_attempt_alone() -> None:
    s = State()
    feed(s, lifecycle("a", T0)[:3])
    feed(s, [ev("task-retried", T0 + 5, uuid="a", hostname=W2)])
    assert s.running.snapshot(T0 + 6) == {("app.add", "default"): (1, pytest.approx(5.7))}


def test_a_retried_task_is_fresh_for_the_ttl() -> None:
    s = State(StateConfig(task_ttl=3600))
    online(s, W1, T0)
    feed(s, lifecycle("a", T0)[:2])
    feed(s, [ev("task-retried", T0 + 3000, uuid="a")])
    s.tick(T0 + 3700)
    assert "a" in s.tasks and s.evicted["ttl"] == 0


def test_a_hostile_task_id_is_counted_at_once_not_held() -> None:
    s = State()
    online(s, W1, T0)
    uuid = "x" * 400
    s.ingest([ev("task-retried", T0, uuid=uuid)], T0)
    assert counter(s, m.TASK_RETRIED, "unknown", "unknown", W1) == 1


def test_received_with_a_higher_retry_count_starts_a_new_attempt() -> None:
    """The retry's task-sent is missing: the new attempt's queue wait is unknown, not the
    time since the first attempt was published."""
    s = State()
    feed(s, lifecycle("a", T0, outcome="task-retried"))
    feed(s, [ev("task-received", T0 + 100, uuid="a", name="app.add", retries=1, eta=None),
             ev("task-started", T0 + 100.5, uuid="a")])
    assert hist(s, m.QUEUE_WAIT, "app.add", "default") == (1, pytest.approx(0.3))
    assert hist(s, m.PREFETCH_WAIT, "app.add", "default") == (2, pytest.approx(0.7))
    assert not any(s.invalid.values())


def test_scheduled_tasks_add_up() -> None:
    s = State()
    eta = "2023-11-14T22:20:00+00:00"
    feed(s, [ev("task-received", T0, uuid=u, name="n", retries=0, eta=eta) for u in "ab"])
    assert (s.workers[W1].scheduled, s.workers[W1].prefetched) == (2, 0)


def test_a_received_task_leaves_the_waiting_room_at_once() -> None:
    """At the cap (max_tasks) a publish is untracked; once received, its queue has nothing
    waiting however many stale entries the others left."""
    s = State(StateConfig(max_tasks=2))
    for uuid in "ab":
        s.ingest([ev("task-sent", T0, uuid=uuid, hostname=PRODUCER, name="n", queue="q",
                     retries=0, eta=None)], T0)
    s.tick(T0 + 1)
    feed(s, [ev("task-received", T0 + 2, uuid=u, name="n", retries=0, eta=None) for u in "ab"])
    s.ingest([ev("task-sent", T0 + 3, uuid="c", hostname=PRODUCER, name="n", queue="q",
                 retries=0, eta=None)], T0 + 3)
    s.tick(T0 + 4)
    feed(s, [ev("task-received", T0 + 5, uuid="c", name="n", retries=0, eta=None)])
    assert s.waiting.snapshot(T0 + 6) == {"q": 0.0}


def test_duplicates_add_up_and_refresh_the_worker() -> None:
    s = State()
    feed(s, lifecycle("a", T0))
    for i in (1, 2):
        s.ingest([ev("task-started", T0 + i, uuid="a"),
                  ev("task-succeeded", T0 + i, uuid="a", runtime=0.5)], T0 + 10 * i)
    assert s.duplicates["task-started"] == 2 and s.duplicates["task-succeeded"] == 2
    assert s.workers[W1].last_seen == T0 + 20


def test_a_finished_task_leaves_the_running_room_before_the_cap_trims_it() -> None:
    s = State(StateConfig(max_tasks=2))
    for uuid in "ab":
        feed(s, lifecycle(uuid, T0)[:3])
    feed(s, [ev("task-succeeded", T0 + 1, uuid="b", runtime=0.7)])
    feed(s, lifecycle("c", T0 + 2)[:3])
    s.tick(T0 + 3)
    assert s.running.snapshot(T0 + 3) == {("app.add", "default"): (2, pytest.approx(2.7))}


def sent_event(uuid: str, ts: float, hostname: str = PRODUCER, **fields: object) -> dict:
    return ev("task-sent", ts, uuid=uuid, hostname=hostname,
              **{"name": "n", "retries": 0, "eta": None, **fields})


def test_the_routing_key_names_the_queue_when_task_sent_has_none() -> None:
    s = State()
    s.ingest([sent_event("a", T0, routing_key="rk")], T0)
    assert counter(s, m.TASK_SENT, "n", "rk") == 1
    assert list(s.queues_seen) == ["rk"]


def test_queues_seen_are_capped_at_ten_thousand() -> None:
    s = State()
    s.ingest([sent_event(f"t{i}", T0, queue=f"q{i}") for i in range(10_001)], T0)
    assert len(s.queues_seen) == 10_000 and "q10000" not in s.queues_seen


def test_each_producer_host_has_its_own_clock_offset() -> None:
    s = State()
    for i in range(3):  # slow's clock reads 100 s behind ours
        s.ingest([sent_event(f"s{i}", T0 + i - 100, hostname="p@slow", queue="q")], T0 + i)
    s.ingest([sent_event("a", T0 + 10, hostname="p@exact", queue="q")], T0 + 10)
    s.ingest([ev("task-started", T0 + 11, uuid="a")], T0 + 11)
    assert hist(s, m.QUEUE_WAIT, "n", "q") == (1, pytest.approx(1.0))
    # A task-sent without a hostname is timed under no host at all.
    s.ingest([{"type": "task-sent", "timestamp": T0 + 18, "uuid": "b", "name": "n",
               "queue": "q"}], T0 + 20)
    assert s.clocks.estimates() == {"slow": 100.0, "exact": 0.0, "w1": 0.0, "": 2.0}


def test_last_sent_keeps_updating_known_names_at_the_cap() -> None:
    s = State(StateConfig(max_series=1))
    s.ingest([sent_event("a", T0, queue="q")], T0)
    s.ingest([sent_event("b", T0 + 10, queue="q"),
              ev("task-sent", T0 + 10, uuid="c", hostname=PRODUCER, name="other", queue="q")],
             T0 + 10)
    assert s.last_sent == {"n": T0 + 10}


def test_a_late_task_sent_names_a_task_that_finished_nameless() -> None:
    s = State()
    online(s, W1, T0)
    feed(s, [ev("task-started", T0, uuid="a"),
             ev("task-succeeded", T0 + 1, uuid="a", runtime=1.0)])
    s.tick(T0 + 10)  # the held observations are counted, unnamed
    s.ingest([sent_event("a", T0 - 1, queue="q")], T0 + 11)
    assert counter(s, m.TASK_SENT, "n", "q") == 1
    assert not any(s.invalid.values())


@pytest.mark.parametrize(("freq", "kept"), [(0.5, 0.5), (3600, 3600.0), (0, 2.0),
                                             (3601, 2.0)])
def test_heartbeat_intervals_above_zero_up_to_an_hour_are_taken(freq: float,
                                                                 kept: float) -> None:
    s = State()
    s.ingest([ev("worker-heartbeat", T0, freq=freq)], T0)
    assert s.workers[W1].freq == kept
    assert s.invalid["value_out_of_range"] == (kept != freq)


def silent_beats(s: State, t: float, count: int, processed: int) -> int:
    for i in range(count):
        processed += 1
        beat(s, t + i, processed)
    return processed


def test_worker_online_clears_events_missing() -> None:
    s = State()
    online(s, W1, T0)
    silent_beats(s, T0, 3, 0)
    assert s.workers[W1].events_missing
    online(s, W1, T0 + 5)
    assert not s.workers[W1].events_missing and not s.task_events_missing


def test_a_task_event_resets_the_silent_heartbeats() -> None:
    s = State()
    online(s, W1, T0)
    processed = silent_beats(s, T0, 2, 0)  # the first beat sets the baseline: 1 silent
    feed(s, [ev("task-received", T0 + 3, uuid="a", name="n", retries=0, eta=None)])
    processed = silent_beats(s, T0 + 4, 1, processed)  # events seen: reset
    silent_beats(s, T0 + 5, 1, processed)  # 1 silent since
    assert not s.workers[W1].events_missing


def test_a_restart_seen_in_the_processed_count_is_reconciled_once() -> None:
    from celery_events_exporter.state.handlers import Reconciled
    s = State()
    online(s, W1, T0)
    eta = "2023-11-14T22:20:00+00:00"
    feed(s, [ev("task-received", T0, uuid="a", name="n", retries=0, eta=None),
             ev("task-received", T0, uuid="b", name="n", retries=0, eta=None),
             ev("task-received", T0, uuid="c", name="n", retries=0, eta=eta)])
    beat(s, T0 + 1, processed=10)
    beat(s, T0 + 2, processed=1)  # restarted unseen
    beat(s, T0 + 3, processed=2)
    assert s.reconciled == [Reconciled(W1, 2, 1, True)]
    s.reconciled.clear()
    s.broker_gap(T0 + 4)
    feed(s, [ev("task-received", T0 + 5, uuid="d", name="n", retries=0, eta=None)])
    beat(s, T0 + 6, processed=3)
    beat(s, T0 + 7, processed=4)
    assert s.reconciled == [Reconciled(W1, 0, 0, False)]
    assert not any(s.invalid.values())


def test_reconciliations_waiting_for_the_log_are_capped() -> None:
    s = State()
    online(s, W1, T0)
    for i in range(1001):
        beat(s, T0 + 2 * i, processed=5)
        beat(s, T0 + 2 * i + 1, processed=1)
    assert len(s.reconciled) == 1000


# -- pending: observations held for task-sent ---------------------------------------------


def received(uuid: str, t: float, worker: str = W1) -> dict:
    return ev("task-received", t, uuid=uuid, name="n", retries=0, eta=None, hostname=worker)


def test_nothing_is_held_once_no_task_sent_came_for_the_memory() -> None:
    from celery_events_exporter.state.pending import SENT_MEMORY
    s = State()
    s.tick(T0)  # no task-sent ever: the memory starts now
    s.ingest([received("a", T0 + SENT_MEMORY - 1)], T0 + SENT_MEMORY - 1)
    assert counter(s, m.TASK_RECEIVED, "n", "unknown", W1) == 0, "still expected: held"
    s.ingest([received("b", T0 + SENT_MEMORY)], T0 + SENT_MEMORY)
    assert counter(s, m.TASK_RECEIVED, "n", "unknown", W1) == 1


def test_a_task_id_of_the_longest_kept_length_is_held() -> None:
    from celery_events_exporter.state.config import MAX_KEY
    s = State()
    uuid = "u" * MAX_KEY
    s.ingest([received(uuid, T0)], T0)
    s.ingest([sent_event(uuid, T0, queue="q")], T0)
    assert counter(s, m.TASK_RECEIVED, "n", "q", W1) == 1


@pytest.mark.parametrize("max_tasks", [1, 2])
def test_held_tasks_are_capped_at_max_tasks_oldest_counted_first(max_tasks: int) -> None:
    s = State(StateConfig(max_tasks=max_tasks))
    for i in range(max_tasks):
        s.ingest([received(f"t{i}", T0)], T0)
    assert counter(s, m.TASK_RECEIVED, "n", "unknown", W1) == 0, "all held: at the cap"
    s.ingest([received("over", T0)], T0)
    assert counter(s, m.TASK_RECEIVED, "n", "unknown", W1) == 1, "the oldest gave way"
    assert len(s.pending.held) == max_tasks
    assert not any(s.invalid.values())


def test_held_observations_resolve_at_their_deadline_with_the_workers_queue_then() -> None:
    from celery_events_exporter.state import PENDING_GRACE
    from celery_events_exporter.state.workers import apply_worker_probe
    s = State()
    online(s, W1, T0)
    s.ingest([received("a", T0)], T0)
    apply_worker_probe(s, W1, 4, 4, frozenset({"emails"}))
    s.tick(T0 + PENDING_GRACE - 0.5)
    assert counter(s, m.TASK_RECEIVED, "n", "emails", W1) == 0
    s.tick(T0 + PENDING_GRACE)
    assert counter(s, m.TASK_RECEIVED, "n", "emails", W1) == 1


# -- running ------------------------------------------------------------------------------


def test_more_executions_than_the_table_holds_are_trimmed_oldest_first() -> None:
    s = State(StateConfig(max_tasks=1))
    feed(s, [ev("task-started", T0, uuid="a", name="n"), ev("task-started", T0, uuid="b")])
    s.tick(T0 + 1)
    assert list(s.running.runs) == ["b"]
    assert s.running.snapshot(T0 + 1) == {("unknown", "unknown"): (1, 1.0)}


def test_running_tasks_without_a_name_or_queue_take_unknown_and_the_workers_queue() -> None:
    from celery_events_exporter.state.workers import apply_worker_probe
    s = State()
    online(s, W1, T0)
    apply_worker_probe(s, W1, 4, 4, frozenset({"emails"}))
    feed(s, [ev("task-started", T0, uuid="a")])
    assert s.running.snapshot(T0 + 1) == {("unknown", "emails"): (1, 1.0)}
    s.tick(T0 + 100)  # silent past its timeout: down, what it ran was interrupted
    assert counter(s, m.TASK_INTERRUPTED, "unknown", "emails", W1) == 1


def test_a_restart_seen_in_the_processed_count_ends_what_ran() -> None:
    s = State()
    online(s, W1, T0)
    feed(s, lifecycle("a", T0)[:3])
    beat(s, T0 + 1, processed=10)
    assert s.running.snapshot(T0 + 1) != {}
    beat(s, T0 + 2, processed=1)
    assert s.running.snapshot(T0 + 2) == {}


def test_excluded_tasks_are_not_running_and_do_not_hide_the_others() -> None:
    s = State(StateConfig(labels=LabelPolicy(exclude_tasks=("app.secret",))))
    feed(s, lifecycle("x", T0, name="app.secret")[:3])
    feed(s, lifecycle("a", T0)[:3])
    assert s.running.snapshot(T0 + 1.3) == {("app.add", "default"): (1, pytest.approx(1.0))}


# -- series -------------------------------------------------------------------------------


def histogram(bounds: tuple[float, ...] = (1.0,)) -> Series:
    stamp = Stamp()
    stamp.wall, stamp.mono = T0, 100.0
    return Series(m.RUNTIME, 10, stamp, bounds, exemplars=True)


def test_observations_add_up_per_bucket_with_the_latest_exemplar_of_each() -> None:
    h = histogram()
    key = ("n", "q")
    for uuid, value in (("a", 0.5), ("b", 0.7), ("c", 2.0)):
        h.observe(key, value, uuid)
    assert h.data[key] == [2, 1, pytest.approx(3.2)]
    assert h.exemplars == {key: [("b", 0.7, T0), ("c", 2.0, T0)]}


@pytest.mark.parametrize("task_id", [None, 7, "x" * 101])
def test_no_exemplar_without_a_task_id_that_fits(task_id: object) -> None:
    h = histogram()
    h.observe(("n", "q"), 0.5, task_id)
    assert h.exemplars == {}
    assert h.data[("n", "q")] == [1, 0, 0.5]


def test_a_task_id_of_100_characters_is_an_exemplar() -> None:
    h = histogram()
    h.observe(("n", "q"), 0.5, "x" * 100)
    assert h.exemplars == {("n", "q"): [("x" * 100, 0.5, T0), None]}


def test_take_fresh_shows_new_series_at_zero_until_the_delay_passed() -> None:
    stamp = Stamp()
    c = Series(m.TASK_SUCCEEDED, 10, stamp)
    assert c.take_fresh(1000.0) == set()
    for mono, key in ((10.0, ("a", "q", "w")), (20.0, ("b", "q", "w"))):
        stamp.mono = mono
        c.inc(key)
    assert c.take_fresh(10.0) == {("a", "q", "w"), ("b", "q", "w")}
    assert c.take_fresh(10.0) == {("b", "q", "w")}, "a was shown at 0 long enough"
    assert c.take_fresh(25.0) == {("b", "q", "w")}
    assert c.take_fresh(25.0) == set()


def test_forgetting_a_worker_forgets_everything_kept_for_its_series() -> None:
    stamp = Stamp()
    c = Series(m.TASK_SUCCEEDED, 10, stamp)
    for worker in ("w1", "w2", "w1"):
        c.inc(("n", "q", worker))
    c.inc(("n", "r", "w1"))
    c.forget_worker("w1", 2)
    assert c.data == {("n", "q", "w2"): [1.0]}
    assert set(c.created) == set(c.fresh) == {("n", "q", "w2")}


# -- tasks --------------------------------------------------------------------------------


def test_an_eta_that_is_not_a_string_is_no_eta() -> None:
    s = State()
    s.ingest([sent_event("a", T0, queue="q", eta=12345)], T0)
    s.ingest([ev("task-started", T0 + 1, uuid="a")], T0 + 1)
    assert hist(s, m.QUEUE_WAIT, "n", "q") == (1, 1.0)
    assert not any(s.invalid.values())


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The local zone five hours behind UTC: a naive ETA read as local time would be off."""
    import time
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_naive_eta_is_utc_whatever_the_local_zone(new_york: None) -> None:
    from celery_events_exporter.state import parse_eta
    assert parse_eta("2023-11-14T22:13:20") == T0
    assert parse_eta("2023-11-14T23:13:20+01:00") == T0


def test_failed_then_rejected_then_a_resent_failure_counts_each_end_once() -> None:
    s = State()
    feed(s, lifecycle("a", T0, outcome="task-failed"))
    feed(s, [ev("task-rejected", T0 + 1, uuid="a", requeue=False),
             ev("task-failed", T0 + 2, uuid="a", exception="ValueError('x')")])
    assert counter(s, m.TASK_FAILED, "app.add", "default", W1, "ValueError") == 1
    assert counter(s, m.TASK_REJECTED, "app.add", "default", W1) == 1
    assert s.duplicates["task-failed"] == 1
    # Another kind of end is not a duplicate of these.
    feed(s, [ev("task-succeeded", T0 + 3, uuid="a", runtime=0.1)])
    assert counter(s, m.TASK_SUCCEEDED, "app.add", "default", W1) == 1


@pytest.mark.parametrize(("length", "kept"), [(320, True), (321, False)])
def test_ends_of_hostile_task_ids_count_but_are_not_remembered(length: int,
                                                              kept: bool) -> None:
    s = State()
    uuid = "u" * length
    s.ingest([ev("task-failed", T0, uuid=uuid, exception="KeyError()")], T0)
    s.tick(T0 + 10)
    assert counter(s, m.TASK_FAILED, "unknown", "unknown", W1, "KeyError") == 1
    assert (uuid in s.finished) is kept


def test_finished_tasks_are_remembered_up_to_the_cap_oldest_forgotten() -> None:
    from celery_events_exporter.state.tasks import FINISHED_CAP
    s = State()
    s.ingest([ev("task-succeeded", T0, uuid=f"t{i}", runtime=0.1)
              for i in range(FINISHED_CAP + 1)], T0)
    assert len(s.finished) == FINISHED_CAP
    assert "t0" not in s.finished and f"t{FINISHED_CAP}" in s.finished


def test_the_ttl_expires_tasks_at_exactly_the_ttl_past_those_kept() -> None:
    s = State(StateConfig(task_ttl=3600, worker_timeout=10_000))
    online(s, W1, T0)
    eta = "2023-11-14T23:00:00+00:00"
    feed(s, [ev("task-received", T0, uuid="a", name="n", retries=0, eta=eta),
             ev("task-received", T0, uuid="b", name="n", retries=0, eta=None),
             ev("task-received", T0, uuid="c", name="n", retries=0, eta=None)])
    s.tick(T0 + 3600)
    assert list(s.tasks) == ["a"], "the scheduled one is kept while its worker lives"
    assert s.evicted["ttl"] == 2


def test_a_gap_reconciles_tasks_received_up_to_its_very_time() -> None:
    from celery_events_exporter.state.handlers import Reconciled
    s = State()
    online(s, W1, T0)
    beat(s, T0, processed=1)
    feed(s, [ev("task-received", T0 + 4, uuid="a", name="n", retries=0, eta=None)])
    s.broker_gap(T0 + 4)
    beat(s, T0 + 5, processed=2)
    assert s.reconciled == [Reconciled(W1, 1, 0, False)]
    assert s.workers[W1].prefetched == 0


# -- waiting ------------------------------------------------------------------------------


def waiting(cap: int = 10, max_queues: int = 10) -> Waiting:
    return Waiting(cap, max_queues, {}, {})


def test_the_waiting_map_holds_exactly_its_cap_and_a_tracked_task_may_move() -> None:
    w = waiting(cap=2)
    w.sent("a", "q", 10.0)
    w.sent("b", "q", 20.0)
    assert w.snapshot(100.0) == {"q": 90.0}
    w.sent("a", "q", 30.0)  # tracked already: re-dated, not refused
    assert w.since == {"a": 30.0, "b": 20.0}
    w.sent("c", "q", 5.0)  # over the cap: untracked, but remembered as the earliest
    assert w.untracked == {"q": 5.0}
    assert w.snapshot(100.0) == {"q": 80.0}, "b is the oldest tracked"


def test_queues_are_capped_at_max_queues() -> None:
    w = waiting(max_queues=2)
    for queue in ("q1", "q2", "q3"):
        w.sent(queue, queue, 10.0)
    assert w.snapshot(20.0) == {"q1": 10.0, "q2": 10.0}


def test_stale_heap_entries_are_rebuilt_beyond_twice_the_live_ones_plus_slack() -> None:
    from celery_events_exporter.state.waiting import _SLACK
    w = waiting(cap=10_000)
    w.sent("other", "q", 0.5)
    w.sent("live", "q", 0.0)
    for i in range(_SLACK + 2):  # re-dated: two live entries, the old ones stale
        w.sent("live", "q", float(i + 1))
    assert w.entries == 2 * 2 + _SLACK, "2 x 2 live + slack: not yet"
    w.sent("live", "q", 99_999.0)
    assert w.entries == 2
    assert w.snapshot(100_000.0) == {"q": 99_999.5}


def test_a_drained_queue_forgets_what_was_published_up_to_the_drain() -> None:
    w = waiting(cap=1)
    w.sent("a", "q", 10.0)
    w.sent("b", "q", 20.0)  # over the cap: untracked
    w.drained("q", 10.0)
    assert w.snapshot(30.0) == {"q": 10.0}, "a went at 10; b (untracked, 20) still waits"
    w.drained("q", 20.0)
    assert w.snapshot(30.0) == {"q": 0.0}


def test_only_tasks_neither_received_nor_started_are_tracked_at_the_flush() -> None:
    s = State()
    for uuid in ("recv", "start", "wait"):
        s.ingest([sent_event(uuid, T0, queue="q")], T0)
    feed(s, [ev("task-received", T0, uuid="recv", name="n", retries=0, eta=None),
             ev("task-started", T0, uuid="start")])  # its task-received lost
    s.waiting.flush()
    assert set(s.waiting.since) == {"wait"}


# -- workers ------------------------------------------------------------------------------


def test_events_of_workers_beyond_the_cap_count_under_their_own_label() -> None:
    s = State(StateConfig(max_series=1))
    online(s, W1, T0)
    feed(s, [ev("task-received", T0, uuid="a", name="n", retries=0, eta=None, hostname=W2),
             ev("task-started", T0 + 1, uuid="a", hostname=W2)])
    settle(s)
    assert list(s.workers) == [W1] and s.workers_dropped == 2
    assert counter(s, m.TASK_STARTED, "n", "unknown", W2) == 1
    assert not any(s.invalid.values())


def test_a_worker_is_alive_until_exactly_twice_its_heartbeat_interval() -> None:
    s = State()
    online(s, W1, T0)
    s.tick(T0 + 4.0)
    assert s.workers[W1].up
    s.tick(T0 + 4.001)
    assert not s.workers[W1].up


def test_a_worker_back_after_going_down_has_nothing_active() -> None:
    s = State()
    online(s, W1, T0)
    s.ingest([ev("worker-heartbeat", T0 + 1, freq=2.0, active=3, processed=0)], T0 + 1)
    s.tick(T0 + 10)
    feed(s, [ev("task-received", T0 + 11, uuid="a", name="n", retries=0, eta=None)])
    assert s.workers[W1].up and s.workers[W1].active == 0


def test_every_invalid_reason_is_counted_from_zero() -> None:
    from celery_events_exporter.decode import REASONS
    from celery_events_exporter.state import EVENT_REASONS
    assert State().invalid == dict.fromkeys((*REASONS, *EVENT_REASONS), 0)


def test_a_worker_first_heard_of_by_its_task_events_has_events_on() -> None:
    s = State()
    feed(s, [ev("task-received", T0, uuid="a", name="n", retries=0, eta=None)])
    assert not s.workers[W1].events_missing and not s.task_events_missing
    beat(s, T0 + 1, processed=1)
    assert s.reconciled == [] and not any(s.invalid.values())


def test_a_worker_known_only_by_heartbeats_needs_two_silent_ones() -> None:
    s = State()
    silent = silent_beats(s, T0, 2, 0)  # the first sets the baseline: one silent interval
    assert not s.workers[W1].events_missing
    silent_beats(s, T0 + 2, 1, silent)
    assert s.workers[W1].events_missing

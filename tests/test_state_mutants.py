"""Lines of the event state that one-line changes got past the suite (issue 15's audit).

Only the state's public behaviour is used: events in through `State.ingest`/`tick` and the
`Pipeline`, numbers out through the collector's samples, as a scrape would see them. Each
test names the change it was written to catch; scripts/mutation measures the rest.
"""

from __future__ import annotations

import re
import time

import pytest
from prometheus_client import CollectorRegistry

from celery_events_exporter.collector import CeleryCollector
from celery_events_exporter.labels import LabelPolicy
from celery_events_exporter.pipeline import Pipeline
from celery_events_exporter.probes import ProbeResults
from celery_events_exporter.state import State, StateConfig, apply_worker_probe

T0 = 1_700_000_000.0
W = "celery@hostw"
PRODUCER = "gen1@hostp"
QUEUE_WAIT = "celery_task_queue_wait_seconds"
CLAMPED = "celery_exporter_waits_clamped_total"


def ev(kind: str, ts: float, hostname: str = W, **fields: object) -> dict:
    return {"type": kind, "timestamp": ts, "hostname": hostname, **fields}


def sent(uuid: str, ts: float, **fields: object) -> dict:
    return ev("task-sent", ts, PRODUCER, uuid=uuid, name="app.add", queue="default", retries=0,
              eta=None, **fields)


def scrape(state: State, probes: ProbeResults | None = None,
           pipeline: Pipeline | None = None) -> CollectorRegistry:
    """A registry whose first scrape is done: new task series show their values, not the
    0 the first scrape shows them at (zero-first, so rate() sees the first increment)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(CeleryCollector(pipeline or Pipeline(state), probes))
    list(registry.collect())
    return registry


def sample(state: State, name: str, labels: dict[str, str] | None = None,
           probes: ProbeResults | None = None) -> float:
    """The sample's value; a missing series fails here rather than reading as 0."""
    value = scrape(state, probes).get_sample_value(name, labels or {})
    assert value is not None, f"no sample {name}{labels or ''}"
    return value


def wait(state: State, part: str) -> float:
    return sample(state, f"{QUEUE_WAIT}_{part}", {"name": "app.add", "queue": "default"})


# -- worker labels ------------------------------------------------------------------------


def labelled(policy: LabelPolicy, hostname: str) -> set[str]:
    state = State(StateConfig(labels=policy))
    state.ingest([ev("worker-online", T0, hostname, freq=2.0)], T0)
    registry = scrape(state)
    return {s.labels["worker"] for f in registry.collect() if f.name == "celery_worker_up"
            for s in f.samples}


def test_host_mode_labels_workers_by_the_host_half_of_the_node_name() -> None:
    assert labelled(LabelPolicy(worker_mode="host"), "celery@web-7") == {"web-7"}


def test_host_mode_keeps_a_node_name_without_at_sign_whole() -> None:
    assert labelled(LabelPolicy(worker_mode="host"), "plainhost") == {"plainhost"}


def test_regex_mode_uses_the_first_group_or_the_whole_match() -> None:
    grouped = LabelPolicy(worker_mode="regex", worker_regex=re.compile(r"@(\w+)-\d+$"))
    assert labelled(grouped, "celery@web-7") == {"web"}
    whole = LabelPolicy(worker_mode="regex", worker_regex=re.compile(r"web-\d"))
    assert labelled(whole, "celery@web-7") == {"web-7"}


def test_regex_mode_without_a_match_keeps_the_full_node_name() -> None:
    policy = LabelPolicy(worker_mode="regex", worker_regex=re.compile(r"@(db)-\d+$"))
    assert labelled(policy, "celery@web-7") == {"celery@web-7"}


def test_long_labels_are_capped_to_max_length_with_an_ellipsis() -> None:
    policy = LabelPolicy(max_length=10)
    assert labelled(policy, "celery@0123456789") == {"celery@..."}
    assert labelled(policy, "celery@012") == {"celery@012"}, "exactly max_length: whole"


# -- clock offsets --------------------------------------------------------------------------


def test_offset_is_the_minimum_over_the_current_and_the_previous_window() -> None:
    # Window 1: both hosts' events arrive at once (offset 0). Window 2: the producer's
    # task-sent spends 10 s in transit and the worker's task-started 6 s; the previous
    # window's minimum (0) still holds, so the wait is the clocks' difference, 4 s.
    # Using the current window alone would subtract the transit times and say 0.
    state = State()
    state.tick(T0)
    state.ingest([sent("warm", T0)], T0)
    state.ingest([ev("worker-online", T0, freq=2.0)], T0)
    state.tick(T0 + 300)
    state.ingest([sent("a", T0 + 301)], T0 + 311)
    state.ingest([ev("task-started", T0 + 305, uuid="a")], T0 + 311)
    assert wait(state, "count") == 1
    assert wait(state, "sum") == 4.0


def test_offset_windows_roll_over_so_an_old_minimum_is_forgotten() -> None:
    # The producer's clock steps back 100 s after the first window. Two window lengths
    # later the old minimum (0, two samples: the estimate is the second smallest) has
    # rolled out, so its events are corrected by 100 s.
    state = State()
    state.tick(T0)
    state.ingest([sent("warm", T0), sent("warm2", T0)], T0)
    state.ingest([ev("worker-online", T0, freq=2.0)], T0)
    state.tick(T0 + 300)
    state.ingest([sent("mid", T0 + 350 - 100)], T0 + 350)
    state.tick(T0 + 600)
    state.ingest([sent("a", T0 + 601 - 100)], T0 + 601)
    state.ingest([ev("worker-heartbeat", T0 + 602, freq=2.0)], T0 + 602)
    state.ingest([ev("task-started", T0 + 603, uuid="a")], T0 + 603)
    assert wait(state, "count") == 1
    assert wait(state, "sum") == 2.0


def test_offset_window_does_not_roll_before_its_length() -> None:
    # Two samples at offset 0 (one alone cannot set the estimate: it is the second
    # smallest). Two ticks inside the window: a window rolled at either would have pushed
    # the zeros out of both windows by the time "a" arrives 100 s late.
    state = State()
    state.tick(T0)
    state.ingest([sent("warm", T0), sent("warm2", T0)], T0)
    state.ingest([ev("worker-online", T0, freq=2.0)], T0)
    state.tick(T0 + 150)
    state.tick(T0 + 299)  # not yet: the producer's 0 offset is still current
    state.ingest([sent("a", T0 + 300 - 100)], T0 + 300)
    state.ingest([ev("task-started", T0 + 300, uuid="a")], T0 + 300)
    assert wait(state, "sum") == 100.0, "sent on the producer's clock, offset 0 kept"


# -- the queue-wait clamp ---------------------------------------------------------------------


def test_queue_wait_below_zero_is_observed_as_zero_and_counted() -> None:
    # One event from each host: the offsets are the transit times, and the worker's clock
    # reads 5 s behind the producer's, so the raw wait is negative.
    state = State()
    state.ingest([sent("a", T0)], T0)
    state.ingest([ev("task-started", T0 - 5, uuid="a")], T0 - 5)
    assert wait(state, "count") == 1
    assert wait(state, "sum") == 0.0
    first = scrape(state).get_sample_value(f"{QUEUE_WAIT}_bucket", {
        "name": "app.add", "queue": "default", "le": "0.005"})
    assert first == 1, "observed in the lowest bucket"
    assert sample(state, CLAMPED, {"metric": QUEUE_WAIT}) == 1
    assert sample(state, CLAMPED, {"metric": "celery_task_prefetch_wait_seconds"}) == 0


def test_queue_wait_below_zero_is_clamped_when_task_sent_arrives_after_the_start() -> None:
    state = State()
    state.ingest([ev("worker-online", T0, freq=2.0)], T0)
    state.ingest([ev("task-started", T0 + 1, uuid="a")], T0 + 1)
    state.ingest([sent("a", T0 + 9)], T0 + 9)  # producer clock 8 s ahead, seen only now
    assert wait(state, "count") == 1
    assert wait(state, "sum") == 0.0
    assert sample(state, CLAMPED, {"metric": QUEUE_WAIT}) == 1


def test_a_positive_wait_is_not_clamped() -> None:
    state = State()
    state.ingest([ev("worker-online", T0, freq=2.0)], T0)
    state.ingest([sent("a", T0)], T0)
    state.ingest([ev("task-started", T0 + 2, uuid="a")], T0 + 2)
    assert wait(state, "sum") == 2.0
    assert sample(state, CLAMPED, {"metric": QUEUE_WAIT}) == 0


# -- cancelled tasks --------------------------------------------------------------------------


def test_cancelled_task_leaves_the_prefetch_buffer() -> None:
    state = State()
    state.ingest([ev("worker-online", T0, freq=2.0)], T0)
    state.ingest([sent("a", T0), ev("task-received", T0, uuid="a", name="app.add", retries=0,
                                    eta=None)], T0)
    assert sample(state, "celery_worker_tasks_prefetched", {"worker": W}) == 1
    state.ingest([ev("task-cancelled", T0 + 1, uuid="a")], T0 + 1)
    assert sample(state, "celery_worker_tasks_prefetched", {"worker": W}) == 0


def test_cancelled_scheduled_task_leaves_the_eta_buffer() -> None:
    state = State()
    state.ingest([ev("worker-online", T0, freq=2.0)], T0)
    state.ingest([ev("task-received", T0, uuid="a", name="app.add", retries=0,
                     eta="2030-01-01T00:00:00")], T0)
    assert sample(state, "celery_worker_tasks_scheduled", {"worker": W}) == 1
    state.ingest([ev("task-cancelled", T0 + 1, uuid="a")], T0 + 1)
    assert sample(state, "celery_worker_tasks_scheduled", {"worker": W}) == 0


def test_cancelled_task_forgets_its_start_so_no_runtime_is_made_up() -> None:
    state = State()
    state.ingest([ev("worker-online", T0, freq=2.0)], T0)
    state.ingest([sent("a", T0)], T0)
    state.ingest([ev("task-started", T0 + 1, uuid="a")], T0 + 1)
    state.ingest([ev("task-cancelled", T0 + 2, uuid="a")], T0 + 2)
    # A later success without a runtime field: nothing to measure the runtime from.
    state.ingest([ev("task-succeeded", T0 + 50, uuid="a")], T0 + 50)
    assert scrape(state).get_sample_value(
        "celery_task_runtime_seconds_count", {"name": "app.add", "queue": "default"}) is None
    assert sample(state, "celery_task_succeeded_total",
                  {"name": "app.add", "queue": "default", "worker": W}) == 1


def test_cancelled_counts_as_a_task_event_of_the_worker() -> None:
    # Heartbeats whose 'processed' grows with task events in between are not "silent".
    state = State()
    state.ingest([ev("worker-online", T0, freq=2.0)], T0)
    for i in range(4):
        state.ingest([ev("task-cancelled", T0 + i, uuid=f"u{i}")], T0 + i)
        state.ingest([ev("worker-heartbeat", T0 + i, freq=2.0, active=0, processed=i + 1)],
                     T0 + i)
    assert sample(state, "celery_worker_task_events_missing", {"worker": W}) == 0


# -- events switched off ----------------------------------------------------------------------


def beats(state: State, processed: list[int], t: float = T0) -> None:
    for i, count in enumerate(processed):
        state.ingest([ev("worker-heartbeat", t + 2 * i, freq=2.0, active=0,
                         processed=count)], t + 2 * i)


def test_two_silent_heartbeats_mean_task_events_are_off_one_does_not() -> None:
    state = State()
    state.ingest([ev("worker-online", T0, freq=2.0)], T0)
    beats(state, [1, 2])  # the first sets the baseline, the second is one silent beat
    assert sample(state, "celery_worker_task_events_missing", {"worker": W}) == 0
    assert sample(state, "celery_exporter_task_events_missing") == 0
    beats(state, [3], T0 + 4)
    assert sample(state, "celery_worker_task_events_missing", {"worker": W}) == 1
    assert sample(state, "celery_exporter_task_events_missing") == 1


def test_heartbeats_without_growth_are_not_silent() -> None:
    state = State()
    state.ingest([ev("worker-online", T0, freq=2.0)], T0)
    beats(state, [5, 5, 5, 5])
    assert sample(state, "celery_worker_task_events_missing", {"worker": W}) == 0


# -- the broker reconnect keeps workers alive ---------------------------------------------------


def test_reconnect_after_an_outage_does_not_call_live_workers_dead() -> None:
    # While the exporter cannot reach the broker no heartbeat can arrive. Coming back, the
    # workers' last-seen moves to the reconnect, so the next tick does not time them out.
    # Workers age on the monotonic clock, which the pipeline reads itself at the reconnect:
    # the worker's last event is placed 120 s (the outage) before now on that clock.
    state = State()
    pipeline = Pipeline(state)
    pipeline.set_connected(True, T0)
    state.ingest([ev("worker-online", T0, freq=30.0)], T0, time.monotonic() - 120)
    pipeline.set_connected(False, T0 + 1)
    pipeline.set_connected(True, T0 + 120)
    back = time.monotonic()  # at or after the reconnect's own clock read
    state.tick(T0 + 121, back)
    registry = scrape(state, pipeline=pipeline)
    assert registry.get_sample_value("celery_worker_up", {"worker": W}) == 1
    assert registry.get_sample_value("celery_exporter_broker_reconnects_total") == 1
    state.tick(T0 + 181, back + 60.001)  # 2 x freq after the reconnect, no heartbeat: down
    registry = scrape(state, pipeline=pipeline)
    assert registry.get_sample_value("celery_worker_up", {"worker": W}) == 0


def test_reconnect_does_not_revive_a_worker_that_was_already_down() -> None:
    state = State()
    pipeline = Pipeline(state)
    pipeline.set_connected(True, T0)
    pipeline.body(b'[{"type": "worker-offline", "timestamp": %f, "hostname": "%s"}]'
                  % (T0, W.encode()), "application/json", T0)
    pipeline.set_connected(False, T0 + 1)
    pipeline.set_connected(True, T0 + 5)
    registry = scrape(state, pipeline=pipeline)
    assert registry.get_sample_value("celery_worker_up", {"worker": W}) == 0


# -- Redis queue consumers ----------------------------------------------------------------------


def test_redis_queue_consumers_count_live_workers_only() -> None:
    # Redis keeps no consumer count: the collector counts workers consuming each queue. A
    # crashed worker must stop counting, or CeleryQueueNoConsumers stays silent.
    state = State()
    for host in (W, "celery@other"):
        state.ingest([ev("worker-online", T0, host, freq=2.0)], T0)
        apply_worker_probe(state, host, 2, 8, frozenset({"default"}))
    probes = ProbeResults()
    probes.queues.length = {"default": 4.0, "idle": 0.0}
    assert sample(state, "celery_queue_consumers", {"queue": "default"}, probes) == 2
    assert sample(state, "celery_queue_consumers", {"queue": "idle"}, probes) == 0
    state.ingest([ev("worker-heartbeat", T0 + 3, "celery@other", freq=2.0)], T0 + 3)
    state.tick(T0 + 4.5)  # W silent for over 2 x freq: down, still listed for retention
    assert sample(state, "celery_worker_up", {"worker": W}) == 0
    assert sample(state, "celery_queue_consumers", {"queue": "default"}, probes) == 1


def test_broker_consumer_counts_win_over_worker_counting() -> None:
    state = State()
    state.ingest([ev("worker-online", T0, freq=2.0)], T0)
    apply_worker_probe(state, W, 2, 8, frozenset({"default"}))
    probes = ProbeResults()
    probes.queues.length = {"default": 1.0}
    probes.queues.consumers = {"default": 7.0}  # RabbitMQ's own count
    assert sample(state, "celery_queue_consumers", {"queue": "default"}, probes) == 7


# -- late task-sent, worker facts, node registry ------------------------------------------------


def test_task_sent_after_the_task_finished_is_counted_but_not_tracked_again() -> None:
    # A busy producer publishes task-sent after the message: the worker's whole lifecycle
    # can arrive first. The late event counts under its queue; the task stays finished.
    state = State()
    state.ingest([ev("worker-online", T0, freq=2.0)], T0)
    state.ingest([ev("task-received", T0, uuid="a", name="app.add", retries=0, eta=None),
                  ev("task-started", T0, uuid="a"),
                  ev("task-succeeded", T0 + 1, uuid="a", runtime=1.0)], T0 + 1)
    state.tick(T0 + 10)  # held observations resolved (queue unknown by then)
    late = ev("task-sent", T0, PRODUCER, uuid="a", name="app.add", queue="reports",
              retries=0, eta=None)
    state.ingest([late], T0 + 11)
    assert sample(state, "celery_task_sent_total", {"name": "app.add", "queue": "reports"}) == 1
    assert sample(state, "celery_exporter_tasks_tracked") == 0


def test_late_task_sent_falls_back_to_routing_key_and_remembered_name() -> None:
    state = State()
    state.ingest([ev("worker-online", T0, freq=2.0)], T0)
    state.ingest([ev("task-received", T0, uuid="a", name="app.mail", retries=0, eta=None),
                  ev("task-started", T0, uuid="a"),
                  ev("task-failed", T0 + 1, uuid="a", exception="KeyError('k')")], T0 + 1)
    state.tick(T0 + 10)
    late = ev("task-sent", T0, PRODUCER, uuid="a", routing_key="mail", retries=0, eta=None)
    state.ingest([late], T0 + 11)
    assert sample(state, "celery_task_sent_total", {"name": "app.mail", "queue": "mail"}) == 1


def test_heartbeat_frequency_sets_the_timeout_and_bad_values_are_ignored() -> None:
    state = State()
    state.ingest([ev("worker-online", T0, "celery@slow", freq=5)], T0)  # int: accepted
    state.ingest([ev("worker-online", T0, "celery@bad", freq=0)], T0)  # not > 0: default 2
    state.ingest([ev("worker-online", T0, "celery@text", freq="5")], T0)  # not a number
    state.tick(T0 + 3)
    assert sample(state, "celery_worker_up", {"worker": "celery@bad"}) == 1, "2 s default"
    state.tick(T0 + 4.5)
    assert sample(state, "celery_worker_up", {"worker": "celery@slow"}) == 1
    assert sample(state, "celery_worker_up", {"worker": "celery@bad"}) == 0
    assert sample(state, "celery_worker_up", {"worker": "celery@text"}) == 0
    state.tick(T0 + 10.5)
    assert sample(state, "celery_worker_up", {"worker": "celery@slow"}) == 0


def test_software_identity_keeps_the_last_non_empty_values_capped() -> None:
    state = State(StateConfig(labels=LabelPolicy(max_length=12)))
    state.ingest([ev("worker-online", T0, freq=2.0, sw_ident="py-celery", sw_ver="5.7.0",
                     sw_sys="Linux-with-a-long-name")], T0)
    state.ingest([ev("worker-heartbeat", T0 + 1, freq=2.0, sw_ident="", sw_ver=5,
                     sw_sys="")], T0 + 1)
    assert sample(state, "celery_worker_info", {
        "worker": W, "version": "5.7.0", "implementation": "py-celery",
        "system": "Linux-wit..."}) == 1


def test_last_heartbeat_is_the_exporter_clock_of_the_last_event() -> None:
    state = State()
    state.ingest([ev("worker-online", T0 - 50, freq=2.0)], T0)  # worker clock 50 s behind
    state.ingest([ev("worker-heartbeat", T0 - 48, freq=2.0)], T0 + 2)
    assert sample(state, "celery_worker_last_heartbeat_timestamp_seconds", {"worker": W}) \
        == T0 + 2


def test_a_worker_back_after_going_down_is_up_and_not_a_clean_shutdown() -> None:
    state = State()
    state.ingest([ev("worker-online", T0, freq=2.0)], T0)
    state.ingest([ev("worker-offline", T0 + 1)], T0 + 1)
    assert sample(state, "celery_worker_clean_shutdown", {"worker": W}) == 1
    state.ingest([ev("worker-heartbeat", T0 + 5, freq=2.0)], T0 + 5)
    assert sample(state, "celery_worker_up", {"worker": W}) == 1
    assert sample(state, "celery_worker_clean_shutdown", {"worker": W}) == 0
    state.tick(T0 + 20)  # then silence: a crash, whatever the goodbye before
    assert sample(state, "celery_worker_up", {"worker": W}) == 0
    assert sample(state, "celery_worker_clean_shutdown", {"worker": W}) == 0


def test_nodes_beyond_max_series_are_counted_not_tracked() -> None:
    state = State(StateConfig(max_series=2))
    for i in range(4):
        state.ingest([ev("worker-online", T0, f"celery@n{i}", freq=2.0)], T0)
    names = {s.labels["worker"] for f in scrape(state).collect()
             if f.name == "celery_worker_up" for s in f.samples}
    assert names == {"celery@n0", "celery@n1"}
    assert sample(state, "celery_exporter_series_dropped_total",
                  {"metric": "celery_worker_up"}) == 2


@pytest.mark.parametrize("hostname", [None, 5, ["x"], "x" * 321])
def test_bad_node_names_are_counted_as_bad_fields(hostname: object) -> None:
    state = State()
    state.ingest([{"type": "worker-heartbeat", "timestamp": T0, "hostname": hostname}], T0)
    assert sample(state, "celery_exporter_events_invalid_total", {"reason": "bad_field"}) == 1
    assert [s for f in scrape(state).collect() if f.name == "celery_worker_up"
            for s in f.samples] == []


def test_a_node_name_of_the_longest_allowed_length_is_kept() -> None:
    host = "celery@" + "h" * (320 - 7)
    state = State(StateConfig(labels=LabelPolicy(max_length=400)))
    state.ingest([ev("worker-online", T0, host, freq=2.0)], T0)
    assert sample(state, "celery_worker_up", {"worker": host}) == 1

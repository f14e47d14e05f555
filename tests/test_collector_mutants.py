"""Collector lines the mutation run (scripts/mutation) found untested: nodes that share a
worker label add up, and the exporter's own gauges say what the state says.

Events in through the state's public entry points, numbers out through a scrape.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from celery_events_exporter.collector import CeleryCollector
from celery_events_exporter.exposition import generate_text
from celery_events_exporter.labels import LabelPolicy
from celery_events_exporter.pipeline import Pipeline
from celery_events_exporter.state import State, StateConfig, apply_worker_probe

T0 = 1_700_000_000.0


def ev(kind: str, ts: float, hostname: str, **fields: object) -> dict:
    return {"type": kind, "timestamp": ts, "hostname": hostname, **fields}


def registry(pipeline: Pipeline) -> CollectorRegistry:
    """A registry past its first scrape, which shows each new task series at 0 (zero-first):
    the renderers compared after it show the values."""
    reg = CollectorRegistry(auto_describe=True)
    reg.register(CeleryCollector(pipeline))
    list(reg.collect())
    return reg


def value(pipeline: Pipeline, name: str, **labels: str) -> float:
    got = registry(pipeline).get_sample_value(name, labels)
    assert got is not None, f"no sample {name}{labels}"
    return got


def host_mode_cluster() -> State:
    """Three nodes on two hosts, labelled by host: h1 has two nodes, h2 one."""
    state = State(StateConfig(labels=LabelPolicy(worker_mode="host"), worker_timeout=10))
    nodes = {"a@h1": (2, 4, 8), "b@h1": (3, 2, 4), "c@h2": (1, 6, 6)}
    for node, (active, pool, limit) in nodes.items():
        state.ingest([ev("worker-online", T0, node, freq=2.0, sw_ident="py-celery",
                         sw_ver="5.7.0", sw_sys="Linux")], T0)
        state.ingest([ev("worker-heartbeat", T0 + 1, node, freq=2.0, active=active,
                         processed=0)], T0 + 1)
        apply_worker_probe(state, node, pool, limit, frozenset({"default"}))
    # Buffers: a@h1 holds 2 prefetched + 1 scheduled, b@h1 1 prefetched + 2 scheduled.
    held = [("a@h1", "p1", None), ("a@h1", "p2", None), ("a@h1", "s1", "2030-01-01T00:00:00"),
            ("b@h1", "p3", None), ("b@h1", "s2", "2030-01-01T00:00:00"),
            ("b@h1", "s3", "2030-01-01T00:00:00")]
    for node, uuid, eta in held:
        state.ingest([ev("task-received", T0 + 2, node, uuid=uuid, name="app.add",
                         retries=0, eta=eta)], T0 + 2)
    return state


def test_nodes_sharing_a_label_add_up() -> None:
    pipeline = Pipeline(host_mode_cluster())
    assert value(pipeline, "celery_worker_up", worker="h1") == 2
    assert value(pipeline, "celery_worker_up", worker="h2") == 1
    assert value(pipeline, "celery_worker_tasks_active", worker="h1") == 5
    assert value(pipeline, "celery_worker_tasks_prefetched", worker="h1") == 3
    assert value(pipeline, "celery_worker_tasks_scheduled", worker="h1") == 3
    assert value(pipeline, "celery_worker_pool_processes", worker="h1") == 6
    assert value(pipeline, "celery_worker_prefetch_limit", worker="h1") == 12
    assert value(pipeline, "celery_worker_pool_processes", worker="h2") == 6
    assert value(pipeline, "celery_worker_tasks_active", worker="h2") == 1


def test_a_down_node_stops_adding_its_active_tasks() -> None:
    state = host_mode_cluster()
    state.ingest([ev("worker-offline", T0 + 3, "b@h1")], T0 + 3)
    pipeline = Pipeline(state)
    assert value(pipeline, "celery_worker_up", worker="h1") == 1
    assert value(pipeline, "celery_worker_tasks_active", worker="h1") == 2
    # Its buffers went back to the broker with it.
    assert value(pipeline, "celery_worker_tasks_prefetched", worker="h1") == 2
    assert value(pipeline, "celery_worker_tasks_scheduled", worker="h1") == 1
    assert value(pipeline, "celery_worker_clean_shutdown", worker="h1") == 0, (
        "one of two nodes said goodbye: the label is not cleanly shut down")


def test_pool_size_sums_only_probed_nodes_and_is_absent_until_one_is() -> None:
    state = State(StateConfig(labels=LabelPolicy(worker_mode="host")))
    for node in ("a@h1", "b@h1"):
        state.ingest([ev("worker-online", T0, node, freq=2.0)], T0)
    pipeline = Pipeline(state)
    assert registry(pipeline).get_sample_value(
        "celery_worker_pool_processes", {"worker": "h1"}) is None
    apply_worker_probe(state, "a@h1", 4, None, None)
    assert value(pipeline, "celery_worker_pool_processes", worker="h1") == 4
    assert value(pipeline, "celery_worker_prefetch_limit", worker="h1") == 0


def silent_beats(state: State, node: str, t: float) -> None:
    for i, processed in enumerate((1, 2, 3)):
        state.ingest([ev("worker-heartbeat", t + i, node, freq=2.0, active=0,
                         processed=processed)], t + i)


def test_events_missing_on_one_node_marks_its_label() -> None:
    state = State(StateConfig(labels=LabelPolicy(worker_mode="host"), worker_timeout=100))
    for node in ("a@h1", "b@h1", "c@h2"):
        state.ingest([ev("worker-online", T0, node, freq=2.0)], T0)
    silent_beats(state, "a@h1", T0)  # the first of the label's nodes: b must not undo it
    pipeline = Pipeline(state)
    assert value(pipeline, "celery_worker_task_events_missing", worker="h1") == 1
    assert value(pipeline, "celery_worker_task_events_missing", worker="h2") == 0
    assert value(pipeline, "celery_exporter_task_events_missing") == 1


def test_events_missing_of_a_down_node_does_not_count() -> None:
    state = State(StateConfig(labels=LabelPolicy(worker_mode="host"), worker_timeout=100))
    for node in ("a@h1", "b@h1"):
        state.ingest([ev("worker-online", T0, node, freq=2.0)], T0)
    silent_beats(state, "a@h1", T0)
    silent_beats(state, "b@h1", T0)
    state.ingest([ev("worker-offline", T0 + 5, "a@h1")], T0 + 5)
    pipeline = Pipeline(state)
    assert value(pipeline, "celery_worker_task_events_missing", worker="h1") == 1, "b is live"
    state.ingest([ev("worker-offline", T0 + 6, "b@h1")], T0 + 6)
    assert value(pipeline, "celery_worker_task_events_missing", worker="h1") == 0


def test_worker_info_needs_only_one_of_version_implementation_system() -> None:
    state = State()
    state.ingest([ev("worker-online", T0, "w@only-ident", freq=2.0, sw_ident="py-celery")], T0)
    state.ingest([ev("worker-online", T0, "w@nothing", freq=2.0)], T0)
    reg = registry(Pipeline(state))
    assert reg.get_sample_value("celery_worker_info", {
        "worker": "w@only-ident", "version": "", "implementation": "py-celery",
        "system": ""}) == 1
    infos = [s.labels["worker"] for f in reg.collect() if f.name == "celery_worker_info"
             for s in f.samples]
    assert infos == ["w@only-ident"]


def test_exporter_gauges_follow_the_pipeline() -> None:
    pipeline = Pipeline(State())
    assert value(pipeline, "celery_exporter_broker_connected") == 0
    assert value(pipeline, "celery_exporter_task_events_missing") == 0
    pipeline.set_connected(True, T0)
    assert value(pipeline, "celery_exporter_broker_connected") == 1
    build = [s for f in registry(pipeline).collect() if f.name == "celery_exporter_build_info"
             for s in f.samples]
    assert [s.value for s in build] == [1.0]


def test_families_with_the_same_label_values_render_their_own_names() -> None:
    # Every task counter keyed by the same (name, queue, worker): the fast renderer's label
    # cache is per family, or one family's lines would carry another's name.
    state = State()
    state.ingest([ev("worker-online", T0, "w@h", freq=2.0)], T0)
    for kind in ("task-received", "task-started", "task-succeeded"):
        state.ingest([ev(kind, T0 + 1, "w@h", uuid="u", name="app.add", runtime=0.1)], T0 + 1)
    state.tick(T0 + 10)  # held observations resolved under the worker's one queue or unknown
    reg = registry(Pipeline(state))
    assert generate_text(reg) == generate_latest(reg)
    assert generate_text(reg) == generate_latest(reg), "second scrape from the cache"


def test_fast_rendering_escapes_label_values_like_prometheus_client() -> None:
    # Each character that needs escaping alone in a value, and none: the fast renderer
    # must decide per value, exactly as the reference does.
    state = State()
    state.ingest([ev("worker-online", T0, "w@h", freq=2.0)], T0)
    for i, name in enumerate(('quo"te', "back\\slash", "new\nline", "plain")):
        state.ingest([ev("task-sent", T0, "p@h", uuid=f"u{i}", name=name, queue="q",
                         retries=0, eta=None),
                      ev("task-received", T0, "w@h", uuid=f"u{i}", name=name, retries=0,
                         eta=None)], T0)
    reg = registry(Pipeline(state))
    text = generate_text(reg)
    assert text == generate_latest(reg)
    assert b'name="quo\\"te"' in text and b'name="new\\nline"' in text
    assert b'name="back\\\\slash"' in text


def test_without_worker_labels_every_other_label_stays() -> None:
    # --worker-label none drops the worker label from task counters; the failed counter's
    # exception label, after it, must stay.
    state = State(StateConfig(labels=LabelPolicy(worker_mode="none")))
    state.ingest([ev("worker-online", T0, "w@h", freq=2.0)], T0)
    state.ingest([ev("task-sent", T0, "p@h", uuid="a", name="app.add", queue="q", retries=0,
                     eta=None),
                  ev("task-failed", T0, "w@h", uuid="a", exception="KeyError('k')")], T0)
    reg = registry(Pipeline(state))
    assert generate_text(reg) == generate_latest(reg)
    assert reg.get_sample_value("celery_task_failed_total", {
        "name": "app.add", "queue": "q", "exception": "KeyError"}) == 1


def test_families_whose_samples_were_read_render_the_same_text() -> None:
    # A family whose samples something already read (a registry helper, a test) renders
    # the generic way; the text must not change.
    state = State()
    state.ingest([ev("worker-online", T0, "w@h", freq=2.0)], T0)
    state.ingest([ev("task-sent", T0, "p@h", uuid="a", name="app.add", queue="q", retries=0,
                     eta=None),
                  ev("task-received", T0, "w@h", uuid="a", name="app.add", retries=0,
                     eta=None),
                  ev("task-started", T0, "w@h", uuid="a"),
                  ev("task-succeeded", T0 + 1, "w@h", uuid="a", runtime=0.5)], T0 + 1)
    collector = CeleryCollector(Pipeline(state))
    list(collector.collect())  # the first scrape shows the new series at 0 (zero-first)

    class Touched:
        def collect(self) -> list:
            families = list(collector.collect())
            for family in families:
                assert family.samples is not None  # builds the samples
            return families

    reg = CollectorRegistry(auto_describe=True)
    reg.register(collector)
    assert generate_text(Touched()) == generate_latest(reg)
    assert b'celery_task_runtime_seconds_count{name="app.add",queue="q"} 1.0' in \
        generate_text(Touched())


def test_periodic_rows_reach_the_scrape_with_every_skip_reason_and_static_labels() -> None:
    # The collector side of the beat probe (test_beat drives the probe): facts in, samples
    # out, with a static label so its position in each key is checked too.
    from celery_events_exporter.beat.schedules import PeriodicFacts, PeriodicRow
    from celery_events_exporter.probes import ProbeResults

    probes = ProbeResults()
    probes.periodic = PeriodicFacts(
        rows=[PeriodicRow("sweep", "app.sweep", T0 + 5, T0 + 35, False),
              PeriodicRow("nightly", "app.nightly", None, T0 + 99, True)],
        skipped={"unsupported": 2, "excluded": 1})
    reg = CollectorRegistry(auto_describe=True)
    reg.register(CeleryCollector(Pipeline(State()), probes, static_labels=(("site", "eu"),)))
    get = reg.get_sample_value
    sweep = {"entry": "sweep", "name": "app.sweep", "site": "eu"}
    nightly = {"entry": "nightly", "name": "app.nightly", "site": "eu"}
    assert get("celery_periodic_task_last_run_timestamp_seconds", sweep) == T0 + 5
    assert get("celery_periodic_task_next_run_timestamp_seconds", sweep) == T0 + 35
    assert get("celery_periodic_task_overdue", sweep) == 0.0
    assert get("celery_periodic_task_last_run_timestamp_seconds", nightly) is None
    assert get("celery_periodic_task_next_run_timestamp_seconds", nightly) == T0 + 99
    assert get("celery_periodic_task_overdue", nightly) == 1.0
    skipped = {r: get("celery_exporter_periodic_entries_skipped", {"reason": r, "site": "eu"})
               for r in ("over_cap", "unsupported", "invalid", "excluded")}
    assert skipped == {"over_cap": 0, "unsupported": 2, "invalid": 0, "excluded": 1}


def test_no_schedule_source_means_no_periodic_families() -> None:
    names = {f.name for f in CeleryCollector(Pipeline(State())).collect()}
    assert not {n for n in names if "periodic" in n}


def test_an_empty_queue_probe_forgets_what_was_published_before_its_run_only() -> None:
    # The probe's run time is wall clock; the waiting room counts on the monotonic one. The
    # two differ here so the conversion is checked: what was published after the run stays.
    from celery_events_exporter.probes import ProbeResults

    mono = T0 - 1000.0  # monotonic = wall - mono

    def sent(uuid: str, t: float, queue: str = "default") -> dict:
        return ev("task-sent", t, "beat@h", uuid=uuid, name="app.add", queue=queue, retries=0)

    state = State()
    for event in (sent("a", T0), sent("b", T0 + 1, "reports"), sent("c", T0 + 27)):
        state.ingest([event], event["timestamp"], event["timestamp"] - mono)
    state.tick(T0 + 30, T0 + 30 - mono)
    results = ProbeResults()
    results.queues.length = {"default": 0.0, "reports": 1.0}
    results.register("redis_queues")
    results.status["redis_queues"].last_run = T0 + 25
    results.register("inspect")  # not a queue probe: its later run is no drain time
    results.status["inspect"].last_run = T0 + 29
    reg = CollectorRegistry(auto_describe=True)
    reg.register(CeleryCollector(Pipeline(state), results))
    age = "celery_queue_oldest_waiting_age_seconds"
    assert reg.get_sample_value(age, {"queue": "default"}) == 0  # empty at the probe
    assert reg.get_sample_value(age, {"queue": "reports"}) == 29
    assert "a" not in state.waiting.since, "published before the empty probe run: forgotten"
    assert "c" in state.waiting.since, "published after the probe run: still waiting"

    # The next probe finds c in the queue: the age is c's, a's is gone for good.
    state.tick(T0 + 40, T0 + 40 - mono)
    results.queues.length = {"default": 1.0, "reports": 1.0}
    results.status["redis_queues"].last_run = T0 + 35
    assert reg.get_sample_value(age, {"queue": "default"}) == 13
    assert reg.get_sample_value(age, {"queue": "reports"}) == 39


def test_histograms_carry_creation_time_exemplars_and_show_new_series_at_0_first() -> None:
    from tests.test_collector import scenario
    from tests.test_state import lifecycle

    pipeline, _ = scenario()
    families = {f.name: f for f in CeleryCollector(pipeline).collect()}
    runtime = families["celery_task_runtime_seconds"]
    key = ("app.add", "default")
    # The exporter's clock when the series was created; an unknown series counts from the
    # exporter's start, counters and histograms alike.
    assert runtime.created(key) == T0 + 0.8 + 0.01  # task-succeeded's receive time
    assert runtime.created(("app.none", "q", "w")) == pipeline.started
    failed = families["celery_task_failed"]
    assert failed.created(("app.none", "q", "w", "E")) == pipeline.started
    assert runtime.exemplars.get(key), "the state's exemplars reach the family"

    # A series that appears after the first scrape shows 0 once, then its counts.
    reg = CollectorRegistry(auto_describe=True)
    reg.register(CeleryCollector(pipeline))
    state = pipeline.state
    for event in lifecycle("n", T0 + 5, name="app.new"):
        state.ingest([event], event["timestamp"] + 0.01)
    labels = {"name": "app.new", "queue": "default"}
    count = "celery_task_runtime_seconds_count"
    assert reg.get_sample_value(count, labels) == 0
    assert reg.get_sample_value(count, labels) == 1


def test_nodes_sharing_a_label_list_every_queue_any_of_them_consumes() -> None:
    state = host_mode_cluster()
    apply_worker_probe(state, "b@h1", 3, 2, frozenset({"reports"}))  # b@h1 moved queue
    pipeline = Pipeline(state)
    reg = registry(pipeline)
    info = "celery_worker_queue_info"
    assert reg.get_sample_value(info, {"worker": "h1", "queue": "default"}) == 1  # a@h1
    assert reg.get_sample_value(info, {"worker": "h1", "queue": "reports"}) == 1  # b@h1
    assert reg.get_sample_value(info, {"worker": "h2", "queue": "reports"}) is None


def test_probe_last_success_is_the_probes_own_time() -> None:
    from celery_events_exporter.probes import ProbeResults

    results = ProbeResults()
    results.register("redis_queues")
    status = results.status["redis_queues"]
    status.last_run, status.last_success, status.success = T0 + 9, T0 + 7, False
    reg = CollectorRegistry(auto_describe=True)
    reg.register(CeleryCollector(Pipeline(State()), results))
    got = reg.get_sample_value("celery_exporter_probe_last_success_timestamp_seconds",
                               {"probe": "redis_queues"})
    assert got == T0 + 7

"""Conformance cases for streams production brings (issue 10): a terminal event re-sent after
a reconnect, more custom event types than the exporter keeps counters for, a task running
longer than the in-flight TTL. Each failed before its fix; the exporter must agree with
Celery's own State on each.

Each test has its own exporter and reference consumer (the streams these tests publish would
spoil the shared fleet's), started together, beside one worker of the newest Celery. Only
task counts and live workers are compared: heartbeats before both were subscribed differ.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery

from tests.conformance.checks import DONE, agree, states, wait_for
from tests.conformance.conftest import Fleet
from tests.conformance.fleet import VERSIONS, VersionWorker
from tests.conformance.reference import Reference
from tests.integration.conftest import make_broker
from tests.integration.harness import Broker, Exporter, Procs, producer

pytestmark = pytest.mark.slow
NEWEST = VERSIONS[-1]
# The exporter holds a task's events up to 5 s for its task-sent; past that it has settled.
SETTLE = 12.0
ADD, SLEEP = "tests.add", "tests.sleep"


@pytest.fixture(scope="module", params=[pytest.param("redis", marks=pytest.mark.redis),
                                        pytest.param("amqp", marks=pytest.mark.amqp)])
def solo(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, VersionWorker]]:
    broker = make_broker(request, request.param)
    procs = Procs(tmp_path_factory.mktemp(f"known-{request.param}"))
    try:
        worker = VersionWorker(procs, broker, NEWEST, ("default",), alias="solo").start()
        yield broker, worker
    finally:
        procs.stop_all()


@pytest.fixture
def pair(solo: tuple[Broker, VersionWorker], request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A fresh exporter (flags from the test's `exporter_args` marker) and reference."""
    broker, worker = solo
    marker = request.node.get_closest_marker("exporter_args")
    procs = Procs(tmp_path_factory.mktemp("known"))
    reference = Reference(broker).start()
    try:
        exporter = Exporter(procs, broker, *(marker.args if marker else ()))
        exporter.wait_up(worker.node, timeout=60)
        # Nothing here restarts the broker: the session's shared server will do.
        yield Fleet(broker, procs, exporter, reference, [worker], server=None)
    finally:
        procs.stop_all()
        reference.stop()


def dispatcher_app(broker: Broker) -> Celery:
    app = Celery("cee_known", broker=broker.url, set_as_current=False)
    app.conf.update(event_exchange=broker.exchange,
                    broker_transport_options=dict(broker.transport_options))
    return app


def run(fleet: Fleet, n: int, name: str = ADD, *args: object) -> list[str]:
    args = args or (1, 2)
    with producer(fleet.broker) as p:
        ids = [p.send(name, *args) for _ in range(n)]
        wait_for(lambda: set(states(fleet.reference, ids)) <= DONE, f"{n} {name} finished",
                 timeout=60)
    return ids


def test_duplicate_terminal_event_counted_once(pair: Fleet) -> None:
    """Celery's dispatcher re-sends its buffered events after a reconnect, so a task-succeeded
    can arrive twice. That reconnect cannot be timed from outside, so the duplicate is
    published here with Celery's own EventDispatcher under the worker's node name."""
    [task_id] = run(pair, 1)
    assert pair.reference.task_state(task_id) == "SUCCESS"
    app = dispatcher_app(pair.broker)
    try:
        with app.connection_for_write() as conn:
            dispatcher = app.events.Dispatcher(conn, hostname=pair.workers[0].node)
            dispatcher.send("task-succeeded", uuid=task_id, result="3", runtime=0.01)
            dispatcher.close()
        wait_for(lambda: pair.reference.snapshot().duplicates == 1, "the duplicate arrived")
    finally:
        app.close()
    agree(pair, timeout=SETTLE, event_types=frozenset())


def test_many_custom_event_types_do_not_hide_task_events(pair: Fleet) -> None:
    app = dispatcher_app(pair.broker)
    try:
        with app.connection_for_write() as conn:
            dispatcher = app.events.Dispatcher(conn, hostname="custom@conformance")
            for i in range(70):
                dispatcher.send(f"custom-{i}")
            dispatcher.close()
        wait_for(lambda: pair.reference.snapshot().events["custom-69"] == 1,
                 "the custom events arrived")
    finally:
        app.close()
    run(pair, 3)
    agree(pair, timeout=SETTLE, event_types=frozenset())


@pytest.mark.exporter_args("--task-ttl", "2")
def test_task_running_longer_than_ttl_keeps_its_name(pair: Fleet) -> None:
    run(pair, 1, SLEEP, 4)
    agree(pair, timeout=SETTLE, event_types=frozenset())

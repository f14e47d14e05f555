"""The queues the exporter declares on RabbitMQ, as the real server reports them.

RabbitMQ 4.3 refuses transient non-exclusive queues by default (deprecated feature
`transient_nonexcl_queues`). Debian ships RabbitMQ 3.10 here, which still accepts them, so
the refusal itself cannot be produced; what decides it can: every queue the exporter
declares (its event queue and the inspect probe's reply queue) must be exclusive or
durable. `rabbitmqctl list_queues` on the private node says what was really declared.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import uuid

import pytest

from celery_events_exporter.config import Config
from celery_events_exporter.ingest.kombu import (
    QUEUE_EXPIRES,
    QUEUE_MAX_BYTES,
    QUEUE_TTL,
    KombuConsumer,
)
from celery_events_exporter.pipeline import Pipeline
from celery_events_exporter.probes import ProbeResults
from celery_events_exporter.probes.workers import InspectProbe
from celery_events_exporter.state import State
from tests.support.procs import wait_until
from tests.support.servers import RabbitServer

pytestmark = pytest.mark.amqp

EVENT_PREFIX = "celeryev.celery-events-exporter."


def list_queues(server: RabbitServer) -> dict[str, dict]:
    exe = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    out = subprocess.run([exe, "-n", server.name, "-q", "list_queues", "name", "durable",
                          "auto_delete", "exclusive", "arguments", "--formatter", "json"],
                         env=server._env(), check=True, capture_output=True, text=True,
                         timeout=60).stdout
    return {q["name"]: q for q in json.loads(out)}


def _args(queue: dict) -> dict:
    # RabbitMQ 3.x's JSON formatter renders arguments as AMQP table entries,
    # [key, type, value]; a map is accepted too.
    args = queue["arguments"]
    return {entry[0]: entry[-1] for entry in args} if isinstance(args, list) else args


@pytest.fixture
def rabbit(rabbit_srv: RabbitServer | None) -> RabbitServer:
    if rabbit_srv is None:
        pytest.skip("CEE_TEST_AMQP_URL names an outside broker: rabbitmqctl cannot reach it")
    return rabbit_srv


def test_event_and_reply_queues_are_exclusive(rabbit: RabbitServer) -> None:
    exchange = f"celeryev.props{uuid.uuid4().hex[:8]}"
    pipeline = Pipeline(State())
    consumer = KombuConsumer(Config(broker_url=rabbit.url, events_exchange=exchange,
                                    ingest="kombu"), pipeline)
    # No worker answers: the probe waits out its timeout with its reply queue declared,
    # which is when the queue can be seen (it goes when the probe stops consuming it).
    probe = InspectProbe(rabbit.url, {}, Pipeline(State()), 0, 10)
    asking = threading.Thread(target=probe.run, args=(ProbeResults(),), daemon=True)
    consumer.start()
    try:
        wait_until(lambda: pipeline.connected, 30, what="the consumer to connect")
        asking.start()
        queues = wait_until(lambda: (lambda qs: qs if any(
            n.endswith(".reply.celery.pidbox") for n in qs) else None)(list_queues(rabbit)),
            15, what="the inspect reply queue")
        ours = {n: q for n, q in queues.items() if n.startswith(EVENT_PREFIX)}
        assert len(ours) == 1, queues
        (first_name, event_q), = ours.items()
        assert (event_q["durable"], event_q["exclusive"]) == (False, True), event_q
        args = _args(event_q)
        assert args.get("x-message-ttl") == int(QUEUE_TTL * 1000), args
        assert args.get("x-expires") == int(QUEUE_EXPIRES * 1000), args
        assert args.get("x-max-length-bytes") == QUEUE_MAX_BYTES, args
        replies = [q for n, q in queues.items() if n.endswith(".reply.celery.pidbox")]
        assert replies, queues
        # What RabbitMQ 4.3 refuses: transient (not durable) and not exclusive.
        transient_shared = [q["name"] for q in [event_q, *replies]
                            if not q["durable"] and not q["exclusive"]]
        assert transient_shared == [], queues

        # A reconnect declares a fresh name: the old exclusive queue may outlive a dead
        # connection for a while, and redeclaring it would fail with RESOURCE_LOCKED.
        consumer.close()
        wait_until(lambda: any(n.startswith(EVENT_PREFIX) and n != first_name
                               for n in list_queues(rabbit)), 30,
                   what="a new event queue after the reconnect")
        wait_until(lambda: first_name not in list_queues(rabbit), 30,
                   what="the old event queue to go with its connection")
    finally:
        consumer.stop()
        asking.join(30)
        probe.close()

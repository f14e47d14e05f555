"""Fixtures for the conformance suite: one worker fleet (every Celery version) per broker,
with the exporter and Celery's reference consumer beside it, shared by the module's tests.

The fleet's brokers are this suite's own private Redis and RabbitMQ, not the session's
shared ones (tests/conftest.py): test_broker_restart_mid_load kills and restarts its broker,
which on a shared server would cut every pooled connection other modules hold (the demo
project's Celery app among them), whichever test happened to run before. Within a server,
each fleet has its own namespace (events exchange, Redis database) as in tests/integration.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conformance.fleet import VERSIONS, VersionWorker, start_fleet, worker_name
from tests.conformance.reference import Reference
from tests.integration.conftest import make_broker
from tests.integration.harness import Broker, Exporter, Procs
from tests.support.servers import RabbitServer, RedisServer, rabbit_server, redis_server

# Shared queues per version: two workers or more on every queue, no two sets alike. Each
# version also consumes its own queue, so every version runs every task shape.
SHARED_QUEUES = {
    "5.3": ("default", "other"),
    "5.4": ("other", "prio"),
    "5.5": ("default", "prio"),
    "5.6": ("default",),
    "5.7": ("default", "other", "prio"),
}


def layout() -> list[tuple[str, tuple[str, ...]]]:
    assert set(SHARED_QUEUES) == set(VERSIONS), (
        f"tests/conformance/requirements has {VERSIONS}: give each its queues here")
    return [(v, (*SHARED_QUEUES[v], worker_name(v))) for v in VERSIONS]


@dataclass
class Fleet:
    broker: Broker
    procs: Procs
    exporter: Exporter
    reference: Reference
    workers: list[VersionWorker]
    # The broker's server when this suite owns it (and so may restart it); None for a
    # RabbitMQ named by CEE_TEST_AMQP_URL.
    server: RedisServer | RabbitServer | None

    def worker(self, version: str) -> VersionWorker:
        return next(w for w in self.workers if w.version == version)


@pytest.fixture(scope="session")
def conformance_redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(scope="session")
def conformance_rabbit() -> Iterator[RabbitServer | None]:
    if os.environ.get("CEE_TEST_AMQP_URL"):
        yield None
        return
    with rabbit_server() as server:
        yield server


@pytest.fixture(scope="module", params=[pytest.param("redis", marks=pytest.mark.redis),
                                        pytest.param("amqp", marks=pytest.mark.amqp)])
def fleet(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    server: RedisServer | RabbitServer | None = request.getfixturevalue(
        "conformance_redis" if request.param == "redis" else "conformance_rabbit")
    broker = make_broker(request, request.param,
                         server_url=server.url if server is not None else None)
    procs = Procs(tmp_path_factory.mktemp(f"conformance-{request.param}"))
    reference = None
    try:
        # Both consumers subscribe before any worker starts, so both see the whole stream.
        reference = Reference(broker).start()
        exporter = Exporter(procs, broker)
        workers = start_fleet(procs, broker, layout())
        fleet = Fleet(broker, procs, exporter, reference, workers, server)
        exporter.wait_up(*(w.node for w in workers), timeout=90)
        yield fleet
    finally:
        procs.stop_all()
        if reference is not None:
            reference.stop()

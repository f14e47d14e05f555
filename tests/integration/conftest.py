"""Fixtures for the integration suite: per-test broker namespaces and process cleanup.

Each test gets its own events exchange and, on Redis, its own database (4-15; the demo
suite uses 3), emptied before use; on RabbitMQ the task queues are deleted before use.
Tests run one after another, so those namespaces never overlap.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Broker, Procs

_REDIS_DBS = itertools.cycle(range(4, 16))
_SEQ = itertools.count(1)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


def make_broker(request: pytest.FixtureRequest, kind: str, *, server_url: str | None = None,
                **options: object) -> Broker:
    """A fresh namespace on the session's server of `kind`, or on the one at `server_url`."""
    exchange = f"celeryev.it{next(_SEQ)}"
    if kind == "redis":
        base = (server_url or request.getfixturevalue("redis_url")).rsplit("/", 1)[0]
        broker = Broker("redis", f"{base}/{next(_REDIS_DBS)}", exchange, dict(options))
    else:
        url = server_url or request.getfixturevalue("amqp_url")
        broker = Broker("amqp", url, exchange, dict(options))
    broker.reset()
    return broker


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.redis),
                        pytest.param("amqp", marks=pytest.mark.amqp)])
def broker(request: pytest.FixtureRequest) -> Broker:
    """The test runs once against Redis and once against RabbitMQ."""
    return make_broker(request, request.param)


@pytest.fixture
def redis_broker(request: pytest.FixtureRequest) -> Broker:
    return make_broker(request, "redis")

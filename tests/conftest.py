from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.servers import RabbitServer, RedisServer, rabbit_server, redis_server


@pytest.fixture(scope="session")
def redis_srv() -> Iterator[RedisServer]:
    """A private redis-server for the whole test session."""
    with redis_server() as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_srv: RedisServer) -> str:
    return redis_srv.url


@pytest.fixture(scope="session")
def rabbit_srv() -> Iterator[RabbitServer | None]:
    if os.environ.get("CEE_TEST_AMQP_URL"):
        yield None
        return
    with rabbit_server() as server:
        yield server


@pytest.fixture(scope="session")
def amqp_url(rabbit_srv: RabbitServer | None) -> str:
    """A private RabbitMQ node, or the one named by CEE_TEST_AMQP_URL."""
    return os.environ.get("CEE_TEST_AMQP_URL") or rabbit_srv.url  # type: ignore[union-attr]

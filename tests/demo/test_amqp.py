"""The demo on RabbitMQ: same tasks and settings, plus the x-max-priority queue.

Uses the session's private RabbitMQ node (`amqp_url`), started once for all suites.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.demo.conftest import DemoEnv
from tests.demo.helpers import QUEUES, run_scenario, run_worker

pytestmark = pytest.mark.amqp


@pytest.fixture
def amqp_queues(amqp_url: str) -> Iterator[str]:
    """The node is shared with the exporter's suites: leave none of our queues behind."""
    from kombu import Connection

    yield amqp_url
    with Connection(amqp_url, connect_timeout=5) as conn:
        for name in QUEUES:
            channel = conn.channel()
            channel.queue_delete(name)
            channel.close()


def test_demo_on_rabbitmq(demo: DemoEnv, amqp_queues: str) -> None:
    from kombu import Connection

    amqp_url = amqp_queues
    env = demo.subprocess_env(CELERY_BROKER_URL=amqp_url)
    with run_worker(env, demo.base / "worker-amqp.log", "demo-amqp@127.0.0.1"):
        out = run_scenario(env)
        assert out["crunch"]["primes"] == 25
        assert out["bad"] == {"state": "FAILURE", "exc_type": "KeyError"}
        assert out["flaky"]["attempts"] == 2
        assert out["welcome_sent"] is True

        with Connection(amqp_url, connect_timeout=5) as conn:
            # The worker declared `priority` with x-max-priority; declaring it again
            # without the argument is refused by RabbitMQ (PRECONDITION_FAILED, 406).
            channel = conn.channel()
            _, _, consumers = channel.queue_declare("priority", passive=True)
            assert consumers == 1
            channel = conn.channel()
            with pytest.raises(Exception, match="inequivalent arg 'x-max-priority'"):
                channel.queue_declare("priority", durable=True, auto_delete=False,
                                      arguments={})
            channel = conn.channel()
            channel.queue_declare("priority", durable=True, auto_delete=False,
                                  arguments={"x-max-priority": 10})

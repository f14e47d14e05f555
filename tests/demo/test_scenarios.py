"""`loadgen --scenario`: each incident's work lands where it must, and the crash task really
takes its worker down (a real prefork worker on a real Redis). The alerts they fire are
seen end to end in tests/e2e/test_incident_scenarios.py."""

from __future__ import annotations

import base64
import io
import json
import re
import signal
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.demo.conftest import DemoEnv
from tests.demo.helpers import queue_keys, run_worker, wait_until

pytestmark = pytest.mark.usefixtures("celery_app")


@pytest.fixture
def client(demo: DemoEnv) -> Any:
    import redis
    from tasks.loadgen import CRASH_QUEUE, UNCONSUMED_QUEUE

    client = redis.Redis.from_url(demo.broker_url)
    keys = [k for q in ("reports", CRASH_QUEUE, UNCONSUMED_QUEUE) for k in queue_keys(q)]
    client.delete(*keys)
    yield client
    client.delete(*keys)
    client.close()


def messages(client: Any, queue: str) -> list[tuple[str, list[Any]]]:
    """(task name, args) of every message waiting in the queue."""
    out = []
    for key in queue_keys(queue):
        for raw in client.lrange(key, 0, -1):
            message = json.loads(raw)
            body = json.loads(base64.b64decode(message["body"]))
            out.append((message["headers"]["task"], body[0]))
    return out


def test_each_scenario_publishes_its_incident_and_nothing_else(client: Any) -> None:
    from tasks.loadgen import (
        CRASH_AFTER_SECONDS,
        CRASH_QUEUE,
        LONG_SECONDS,
        UNCONSUMED_QUEUE,
    )

    out = io.StringIO()
    # Both spellings at once: a comma list and a repeated flag; --max-tasks 0: no load.
    call_command("loadgen", scenario=["long,waiting", "interrupted", "long"], max_tasks=0,
                 rate=10, duration=5, seed=1, stdout=out)
    line = out.getvalue().strip()
    assert re.match(r"loadgen: sent 0 tasks .* stopped_by=max-tasks revoked=0 "
                    r"scenarios=long,waiting,interrupted \|$", line), line
    assert messages(client, "reports") == [("tasks.slow_report", [LONG_SECONDS])]
    assert messages(client, CRASH_QUEUE) == [("tasks.crash_worker", [CRASH_AFTER_SECONDS])]
    assert messages(client, UNCONSUMED_QUEUE) == [("tasks.crunch_numbers", [50_000])]


def test_an_unknown_scenario_is_refused(client: Any) -> None:
    with pytest.raises(CommandError, match=r"unknown scenario\(s\) ghost \(choose from long"):
        call_command("loadgen", scenario=["long,ghost"], max_tasks=0, stdout=io.StringIO())
    with pytest.raises(CommandError, match="max-tasks must be >= 1"):
        call_command("loadgen", max_tasks=0, stdout=io.StringIO())
    assert messages(client, "reports") == []


def test_the_demo_stack_knows_the_same_scenarios() -> None:
    from tasks import loadgen

    from scripts import stack

    assert tuple(loadgen.SCENARIOS) == stack.SCENARIOS
    assert (stack.CRASH_QUEUE, stack.UNCONSUMED_QUEUE) == (loadgen.CRASH_QUEUE,
                                                           loadgen.UNCONSUMED_QUEUE)


def test_crash_task_refuses_to_run_outside_a_pool_child() -> None:
    from tasks import tasks

    # Here (the main process) its parent would be whatever started pytest.
    with pytest.raises(RuntimeError, match="only in a prefork pool child"):
        tasks.crash_worker.run(0)


def test_crash_task_kills_its_worker_mid_task(demo: DemoEnv, client: Any) -> None:
    from tasks import tasks
    from tasks.loadgen import CRASH_QUEUE

    with run_worker(demo.subprocess_env(), demo.base / "worker-crash.log",
                    "demo-crash@127.0.0.1", queues=[CRASH_QUEUE], concurrency=1) as worker:
        result = tasks.crash_worker.apply_async((0.5,))
        worker.wait_for_log(f"Task tasks.crash_worker[{result.id}] received", 20)
        # SIGKILL: no warm shutdown, no worker-offline, no terminal event for the task.
        assert wait_until(lambda: worker.proc.poll(), 20, what="the worker killed") \
            == -signal.SIGKILL
        log = worker.log()
    assert "succeeded" not in log and "raised" not in log, log[-2000:]
    # Early ack: the message is not left for a restarted worker to crash on again.
    assert messages(client, CRASH_QUEUE) == []
    assert not any(result.id.encode() in v for v in client.hvals("unacked"))

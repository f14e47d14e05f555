"""`manage.py loadgen` against a real worker started with a larger prefetch multiplier."""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.management import call_command

from tests.demo.conftest import DemoEnv
from tests.demo.helpers import Worker, purge_queues, run_worker, wait_until

pytestmark = pytest.mark.usefixtures("celery_app")

MULTIPLIER = 4
CONCURRENCY = 2


@pytest.fixture(scope="module")
def worker(demo: DemoEnv, celery_app: Any) -> Iterator[Worker]:
    import redis

    client = redis.Redis.from_url(demo.broker_url)
    purge_queues(client)
    client.close()
    env = demo.subprocess_env(CELERY_WORKER_PREFETCH_MULTIPLIER=str(MULTIPLIER))
    with run_worker(env, demo.base / "worker-load.log", "demo-load@127.0.0.1",
                    concurrency=CONCURRENCY) as w:
        yield w


def _loadgen(**opts: Any) -> str:
    out = io.StringIO()
    call_command("loadgen", stdout=out, **opts)
    return out.getvalue().strip()


def test_loadgen_stops_at_max_tasks() -> None:
    line = _loadgen(rate=50, duration=30, max_tasks=5, seed=1, mix="failures")
    assert re.match(r"loadgen: sent 5 tasks in [\d.]+s \([\d.]+/s\) mix=failures seed=1 "
                    r"stopped_by=max-tasks ", line), line


def test_loadgen_stops_at_its_duration() -> None:
    # 3 tasks/s for 1 s: the schedule (rate x duration tasks) ends the run, not a count.
    line = _loadgen(rate=3, duration=1.0, seed=2, mix="failures")
    match = re.match(r"loadgen: sent (\d+) tasks in [\d.]+s .* stopped_by=duration ", line)
    assert match, line
    assert 1 <= int(match[1]) <= 3


def test_loadgen_mixed_load_reaches_every_outcome(worker: Worker) -> None:
    from django_celery_results.models import TaskResult

    since = TaskResult.objects.order_by("-id").values_list("id", flat=True).first() or 0
    # One deck of the default mix (18 tasks) holds every kind: stop after exactly one, so
    # the count does not depend on how fast this machine publishes.
    line = _loadgen(rate=40, duration=60, max_tasks=18, seed=7, slow_seconds=1,
                    max_countdown=3)
    match = re.match(r"loadgen: sent (\d+) tasks .* stopped_by=max-tasks revoked=(\d+) "
                     r"\| (.*)$", line)
    assert match, line
    sent, revoked = int(match[1]), int(match[2])
    assert sent == 18
    kinds = dict(kv.split("=") for kv in match[3].split())
    assert sum(map(int, kinds.values())) == sent
    assert revoked == int(kinds["revoke"]) == 1

    def outcomes() -> Counter[str] | None:
        seen: Counter[str] = Counter()
        for status, result in TaskResult.objects.filter(id__gt=since).values_list(
                "status", "result"):
            seen[status] += 1
            if status == "FAILURE":
                seen[re.search(r'"exc_type": "(\w+)"', result)[1]] += 1
        wanted = {"SUCCESS", "REVOKED", "ValueError", "KeyError", "ExternalServiceError"}
        return seen if wanted <= set(seen) else None

    # ExternalServiceError needs the last of three backoff retries (<= 7 s with jitter).
    seen = wait_until(outcomes, timeout=30, interval=0.5, what="every outcome in TaskResult")
    assert seen["REVOKED"] == revoked
    assert "task_retry" in worker.log()


def test_prefetch_multiplier_override_builds_a_prefetch_backlog(worker: Worker,
                                                              celery_app: Any) -> None:
    from tasks import tasks

    node = worker.nodename
    inspect = celery_app.control.inspect([node], timeout=3)
    # The worker raises its prefetch count by one per ETA task it holds (loadgen's ETA,
    # retry and to-be-revoked tasks), so wait for those to drain.
    wait_until(lambda: (inspect.stats() or {}).get(node, {}).get("prefetch_count")
               == CONCURRENCY * MULTIPLIER, timeout=15, interval=0.5, what="base prefetch")
    results = [tasks.slow_report.delay(1.0) for _ in range(8)]

    def backlog() -> tuple[int, int] | None:
        active = len((inspect.active() or {}).get(node, []))
        reserved = len((inspect.reserved() or {}).get(node, []))
        # Both pool processes busy and messages waiting in the worker, not the queue.
        return (active, reserved) if active == CONCURRENCY and reserved >= 2 else None

    active, reserved = wait_until(backlog, timeout=10, interval=0.2, what="prefetch backlog")
    assert reserved <= CONCURRENCY * MULTIPLIER - active
    for res in results:
        celery_app.control.revoke(res.id)
    # Leave nothing behind: every result final before the next test (in any order) counts
    # REVOKED results of its own.
    wait_until(lambda: all(r.state in ("REVOKED", "SUCCESS") for r in results), timeout=60,
               interval=0.5, what="the revoked reports settled")

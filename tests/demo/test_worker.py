"""The project's tasks through a real prefork worker, a real Redis and the real database."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from tests.demo.conftest import DemoEnv
from tests.demo.helpers import (
    Worker,
    result_json,
    run_worker,
    wait_for_result,
    wait_until,
)


@pytest.fixture(scope="module")
def worker(demo: DemoEnv, celery_app: Any) -> Iterator[Worker]:
    import redis

    from tests.demo.helpers import purge_queues

    client = redis.Redis.from_url(demo.broker_url)
    purge_queues(client)
    client.close()
    with run_worker(demo.subprocess_env(), demo.base / "worker-main.log",
                    "demo-main@127.0.0.1") as w:
        yield w


def test_tasks_succeed_and_store_results(worker: Worker) -> None:
    from tasks import tasks

    crunch = tasks.crunch_numbers.delay(100)
    image = tasks.resize_image.delay(width=640, height=480, max_side=64, seed=3)
    batch = tasks.process_batch.delay(list(range(250)), chunk_size=100)
    record = tasks.import_record.delay({"email": "A@Example.com", "plan": "team", "seats": 3})

    row = wait_for_result(crunch.id)
    assert row.status == "SUCCESS"
    assert result_json(row)["primes"] == 25
    assert row.task_name == "tasks.crunch_numbers"
    assert row.worker == worker.nodename
    assert row.date_started is not None

    assert result_json(wait_for_result(image.id))["width"] == 64
    assert result_json(wait_for_result(batch.id)) | {"checksum": 0} == {
        "items": 250, "chunks": 3, "checksum": 0}
    assert result_json(wait_for_result(record.id)) == {
        "email": "a@example.com", "plan": "team", "seats": 3}


def test_signup_view_sends_welcome_email_through_the_worker(worker: Worker,
                                                           demo: DemoEnv) -> None:
    from tasks.models import Signup

    resp = Client(SERVER_NAME="localhost").post("/signup/", {"email": "new@example.com"})
    assert resp.status_code == 201
    signup_id = resp.json()["id"]

    row = wait_until(lambda: Signup.objects.filter(pk=signup_id, welcome_sent_at__isnull=False)
                     .first(), timeout=20, what="welcome_sent_at")
    assert row.welcome_sent_at is not None
    mails = [p.read_text() for p in demo.mail_dir.glob("*.log")]
    assert any("To: new@example.com" in m and "Welcome aboard" in m for m in mails)


def test_password_reset_runs_from_the_priority_queue(worker: Worker, celery_app: Any) -> None:
    from tasks import tasks
    from tasks.priorities import priority_for

    res = tasks.send_password_reset.apply_async(
        ("reset@example.com",), priority=priority_for("high", celery_app.conf.broker_url))
    row = wait_for_result(res.id)
    assert row.status == "SUCCESS"
    # The token went into the email only, never into results or logs.
    assert "code" not in row.result
    assert "Use this code" not in worker.log()


@pytest.mark.parametrize(("record", "exc_type"), [
    ({"email": "x@example.com"}, "KeyError"),
    ({"email": "x@example.com", "plan": "team", "seats": "ten"}, "ValueError"),
    ({"email": "x@example.com", "plan": "platinum"}, "ValueError"),
])
def test_failures_are_recorded_with_their_exception(worker: Worker, record: dict[str, Any],
                                                    exc_type: str) -> None:
    from tasks import tasks

    res = tasks.import_record.delay(record)
    row = wait_for_result(res.id)
    assert row.status == "FAILURE"
    assert result_json(row)["exc_type"] == exc_type
    assert exc_type in row.traceback
    # The base class logged structured context, without the record's contents.
    line = worker.wait_for_log(f"task_failed task_id={res.id}", 10)
    assert re.search(rf"task_failed task_id={res.id} task_name=tasks.import_record "
                     rf"task_retries=0 .*task_queue=default .*exc_type={exc_type}", line)
    assert "x@example.com" not in worker.log()


def test_flaky_call_retries_with_backoff_then_succeeds(worker: Worker) -> None:
    from tasks import tasks

    res = tasks.call_flaky_service.delay("billing", fail_first=2, latency=0)
    row = wait_for_result(res.id, timeout=20)
    assert row.status == "SUCCESS"
    assert result_json(row)["attempts"] == 3
    log = worker.log()
    for retries in (0, 1):
        assert (f"task_retry task_id={res.id} task_name=tasks.call_flaky_service "
                f"task_retries={retries} task_max_retries=3") in log
    assert "exc_type=ExternalServiceError" in log


def test_flaky_call_gives_up_after_max_retries(worker: Worker) -> None:
    from tasks import tasks

    res = tasks.call_flaky_service.delay("geocoder", fail_first=99, latency=0)
    # Backoff with full jitter: at most 1 + 2 + 4 s of countdowns before the last attempt.
    row = wait_for_result(res.id, timeout=25)
    assert row.status == "FAILURE"
    assert result_json(row)["exc_type"] == "ExternalServiceError"
    log = worker.log()
    assert log.count(f"task_retry task_id={res.id}") == 3
    assert f"task_failed task_id={res.id} task_name=tasks.call_flaky_service task_retries=3" in log


def test_countdown_task_runs_after_its_eta(worker: Worker) -> None:
    from tasks import tasks

    sent = dt.datetime.now(dt.UTC)
    res = tasks.crunch_numbers.apply_async((1000,), countdown=2)
    eta = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1.5)
    res_eta = tasks.crunch_numbers.apply_async((1000,), eta=eta)
    row = wait_for_result(res.id, timeout=15)
    assert row.status == "SUCCESS"
    assert row.date_started >= sent + dt.timedelta(seconds=2)
    assert wait_for_result(res_eta.id, timeout=15).date_started >= eta


def test_revoked_scheduled_task_never_runs(worker: Worker, celery_app: Any) -> None:
    from tasks import tasks

    res = tasks.slow_report.apply_async((5,), countdown=2)
    # The worker reserves an ETA task at once and holds it until the ETA.
    worker.wait_for_log(f"Task tasks.slow_report[{res.id}] received", 10)
    celery_app.control.revoke(res.id)
    # Celery 5.7 stores REVOKED as soon as a worker takes the revoke...
    row = wait_for_result(res.id, timeout=10)
    assert row.status == "REVOKED"
    # ...and drops the message when its ETA comes (that is when task-revoked is sent).
    worker.wait_for_log(f"Discarding revoked task: tasks.slow_report[{res.id}]", 10)
    row.refresh_from_db()
    assert row.status == "REVOKED"
    assert row.date_started is None
    assert f"tasks.slow_report[{res.id}] succeeded" not in worker.log()


def test_worker_prefetch_limit_is_one_per_process(worker: Worker, celery_app: Any) -> None:
    stats = celery_app.control.inspect([worker.nodename], timeout=3).stats() or {}
    assert stats[worker.nodename]["prefetch_count"] == 2  # concurrency 2 x multiplier 1

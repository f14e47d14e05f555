"""The demo's periodic tasks (CELERY_BEAT_SCHEDULE), run in-process against the real
(SQLite) database and the real private Redis: what each one changes or publishes."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import pytest

from tests.demo.helpers import queue_keys, queue_length

pytestmark = pytest.mark.usefixtures("celery_app")


def _signup(email: str, age: timedelta, sent: bool = False) -> int:
    from django.utils import timezone
    from tasks.models import Signup

    signup = Signup.objects.create(email=email)
    now = timezone.now()
    Signup.objects.filter(pk=signup.pk).update(created_at=now - age,
                                               welcome_sent_at=now if sent else None)
    return signup.pk


def _queued_args(client: Any, queue: str) -> list[list]:
    out = []
    for key in queue_keys(queue):
        for raw in client.lrange(key, 0, -1):
            message = json.loads(raw)
            args, _, _ = json.loads(base64.b64decode(message["body"]))
            out.append(args)
    return out


@pytest.fixture
def no_signups() -> None:
    from tasks.models import Signup

    Signup.objects.all().delete()


@pytest.mark.usefixtures("no_signups")
def test_resend_requeues_only_lost_welcome_emails(broker: Any) -> None:
    from tasks.tasks import resend_welcome_emails

    lost = _signup("lost@example.com", timedelta(minutes=10))
    _signup("sent@example.com", timedelta(minutes=10), sent=True)
    _signup("fresh@example.com", timedelta(minutes=1))  # its email may still be on the way
    assert resend_welcome_emails.apply().get() == {"requeued": 1}
    assert queue_length(broker, "emails") == 1
    assert _queued_args(broker, "emails") == [[lost]]


@pytest.mark.usefixtures("no_signups")
def test_resend_drains_a_backlog_in_bounded_batches(broker: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks import tasks

    monkeypatch.setattr(tasks, "RESEND_BATCH", 2)
    ids = [_signup(f"lost{i}@example.com", timedelta(minutes=10)) for i in range(3)]
    assert tasks.resend_welcome_emails.apply().get() == {"requeued": 2}
    # The oldest first, by id (the list holds them newest first: LPUSH).
    assert sorted(_queued_args(broker, "emails")) == [[ids[0]], [ids[1]]]


def test_cleanup_deletes_only_expired_results() -> None:
    from django.conf import settings
    from django.utils import timezone
    from django_celery_results.models import TaskResult
    from tasks.tasks import cleanup_results

    now = timezone.now()
    old = TaskResult.objects.create(task_id="periodic-old", status="SUCCESS")
    new = TaskResult.objects.create(task_id="periodic-new", status="SUCCESS")
    TaskResult.objects.filter(pk=old.pk).update(
        date_done=now - settings.CELERY_RESULT_EXPIRES - timedelta(minutes=1))
    assert cleanup_results.apply().get()["deleted"] >= 1
    assert not TaskResult.objects.filter(task_id="periodic-old").exists()
    assert TaskResult.objects.filter(pk=new.pk).exists()


@pytest.mark.usefixtures("no_signups")
def test_signup_report_counts_the_window() -> None:
    from tasks.tasks import signup_report

    _signup("a@example.com", timedelta(minutes=1))
    _signup("b@example.com", timedelta(minutes=2), sent=True)
    _signup("old@example.com", timedelta(minutes=30))
    assert signup_report.apply(kwargs={"minutes": 5}).get() == {
        "minutes": 5, "signups": 2, "welcome_pending": 1}

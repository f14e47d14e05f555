"""Publishing side only, against the real private Redis and the real (SQLite) database.

No worker consumes here, so whatever the code enqueues stays in the broker's lists and
LLEN tells exactly what was published.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import transaction
from django.test import Client

from tests.demo.helpers import PRIORITY_SEP, queue_length

pytestmark = pytest.mark.usefixtures("celery_app")


class Boom(Exception):
    pass


def _signups(email: str) -> int:
    from tasks.models import Signup

    return Signup.objects.filter(email=email).count()


def test_rollback_enqueues_nothing(broker: Any) -> None:
    from tasks.services import register_signup

    email = "rollback@example.com"
    with pytest.raises(Boom), transaction.atomic():
        register_signup(email)
        raise Boom
    assert _signups(email) == 0
    assert queue_length(broker, "emails") == 0

    # Control: the same call committed publishes exactly one message to `emails`.
    register_signup(email)
    assert _signups(email) == 1
    assert queue_length(broker, "emails") == 1
    assert sum(queue_length(broker, q) for q in ("default", "reports", "priority")) == 0


def test_enqueued_only_after_outer_commit(broker: Any) -> None:
    from tasks.services import register_signup

    with transaction.atomic():
        register_signup("outer@example.com")
        # Still inside the caller's transaction: the row is not committed, nothing is sent.
        assert queue_length(broker, "emails") == 0
    assert queue_length(broker, "emails") == 1


def test_signup_view_queues_the_welcome_email(broker: Any) -> None:
    client = Client(SERVER_NAME="localhost")
    resp = client.post("/signup/", {"email": "view@example.com"})
    assert resp.status_code == 201, resp.content
    assert isinstance(resp.json()["id"], int)
    assert queue_length(broker, "emails") == 1

    resp = client.post("/signup/", json.dumps({"email": "json@example.com"}),
                       content_type="application/json")
    assert resp.status_code == 201
    assert queue_length(broker, "emails") == 2

    assert client.post("/signup/", {"email": "not-an-email"}).status_code == 400
    assert client.get("/signup/").status_code == 405
    assert queue_length(broker, "emails") == 2


def test_routes_and_priority_lists(broker: Any, celery_app: Any) -> None:
    from tasks import tasks
    from tasks.priorities import priority_for

    tasks.crunch_numbers.delay(10)
    tasks.slow_report.delay(0.1)
    tasks.process_batch.delay([1, 2, 3])
    url = celery_app.conf.broker_url
    tasks.send_password_reset.apply_async(("a@example.com",), priority=priority_for("high", url))
    tasks.send_password_reset.apply_async(("b@example.com",), priority=priority_for("low", url))
    assert queue_length(broker, "default") == 1
    assert queue_length(broker, "reports") == 2
    # Each priority step is its own Redis list; the exporter has to add them up.
    assert broker.llen("priority") == 1
    assert broker.llen(f"priority{PRIORITY_SEP}9") == 1


def test_task_messages_are_json(broker: Any) -> None:
    from tasks import tasks

    tasks.crunch_numbers.delay(10)
    raw = broker.lindex("default", 0)
    envelope = json.loads(raw)
    assert envelope["content-type"] == "application/json"
    assert envelope["headers"]["task"] == "tasks.crunch_numbers"

"""The project's configuration and pure helpers: no broker, no worker."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from tests.demo.conftest import DemoEnv

pytestmark = pytest.mark.usefixtures("demo")


def test_celery_app_reads_django_settings(celery_app: Any, demo: DemoEnv) -> None:
    conf = celery_app.conf
    assert conf.broker_url == demo.broker_url
    assert conf.result_backend == "django-db"
    assert conf.worker_send_task_events is True
    assert conf.task_send_sent_event is True
    assert conf.event_serializer == "json"
    assert conf.task_serializer == "json"
    assert conf.accept_content == ["json"]
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_default_queue == "default"
    assert {q.name for q in conf.task_queues} == {"default", "emails", "reports", "priority"}
    priority = next(q for q in conf.task_queues if q.name == "priority")
    assert priority.queue_arguments == {"x-max-priority": 10}
    assert conf.broker_transport_options["priority_steps"] == [0, 3, 6, 9]
    assert conf.broker_transport_options["queue_order_strategy"] == "priority"


def test_task_names_and_routes(celery_app: Any) -> None:
    expected = {
        "tasks.send_welcome_email": "emails",
        "tasks.send_password_reset": "priority",
        "tasks.resize_image": "default",
        "tasks.crunch_numbers": "default",
        "tasks.import_record": "default",
        "tasks.call_flaky_service": "default",
        "tasks.process_batch": "reports",
        "tasks.slow_report": "reports",
        # Periodic (CELERY_BEAT_SCHEDULE): the welcome emails they re-queue go to `emails`.
        "tasks.resend_welcome_emails": "default",
        "tasks.cleanup_results": "default",
        "tasks.signup_report": "default",
        "tasks.crash_worker": "fragile",  # demo only: only a `-Q fragile` worker runs it
    }
    registered = {name for name in celery_app.tasks if name.startswith("tasks.")}
    assert registered == set(expected)
    router = celery_app.amqp.router
    for name, queue in expected.items():
        assert router.route({}, name)["queue"].name == queue, name


def test_task_options(celery_app: Any) -> None:
    from celery.contrib.django.task import DjangoTask
    from tasks.base import ObservedTask
    from tasks.exceptions import ExternalServiceError

    for name in (n for n in celery_app.tasks if n.startswith("tasks.")):
        assert isinstance(celery_app.tasks[name], ObservedTask), name
        assert isinstance(celery_app.tasks[name], DjangoTask), name
    flaky = celery_app.tasks["tasks.call_flaky_service"]
    assert flaky.autoretry_for == (ExternalServiceError,)
    assert flaky.retry_backoff and flaky.retry_jitter and flaky.max_retries == 3
    assert flaky.acks_late is True
    assert celery_app.tasks["tasks.send_welcome_email"].acks_late is False


@pytest.mark.parametrize(("url", "engine", "name"), [
    ("postgresql://u:p%40ss@db.example:6543/app", "django.db.backends.postgresql", "app"),
    ("postgres://db/app", "django.db.backends.postgresql", "app"),
    ("sqlite:////tmp/x.sqlite3", "django.db.backends.sqlite3", "/tmp/x.sqlite3"),
])
def test_database_from_url(url: str, engine: str, name: str) -> None:
    from proj.envconfig import database_from_url

    db = database_from_url(url)
    assert (db["ENGINE"], db["NAME"]) == (engine, name)
    if url.startswith("postgresql://u"):
        assert (db["USER"], db["PASSWORD"], db["HOST"], db["PORT"]) == (
            "u", "p@ss", "db.example", "6543")


def test_database_from_env_precedence(tmp_path: Path) -> None:
    from proj.envconfig import database_from_env

    assert database_from_env({}, tmp_path)["NAME"] == str(tmp_path / "db.sqlite3")
    assert database_from_env({"DJANGO_SQLITE_PATH": "/x.db"}, tmp_path)["NAME"] == "/x.db"
    pg = database_from_env({"DJANGO_DB_ENGINE": "postgresql", "POSTGRES_DB": "d",
                            "POSTGRES_HOST": "h"}, tmp_path)
    assert (pg["ENGINE"], pg["NAME"], pg["HOST"]) == ("django.db.backends.postgresql", "d", "h")
    url_wins = database_from_env({"DATABASE_URL": "postgres://a/b", "DJANGO_DB_ENGINE": "x"},
                                 tmp_path)
    assert url_wins["NAME"] == "b"
    with pytest.raises(ValueError, match="not supported"):
        database_from_env({"DATABASE_URL": "mysql://a/b"}, tmp_path)


def test_env_int_validates() -> None:
    from proj.envconfig import env_int

    assert env_int({"N": "4"}, "N", 1, 1) == 4
    assert env_int({}, "N", 1, 1) == 1
    with pytest.raises(ValueError, match="N must be >= 1"):
        env_int({"N": "0"}, "N", 1, 1)
    with pytest.raises(ValueError, match="integer"):
        env_int({"N": "four"}, "N", 1, 1)


def test_priorities_mean_the_same_on_both_brokers() -> None:
    from tasks.priorities import priority_for

    # Redis serves step 0 first, RabbitMQ serves 9 first.
    assert priority_for("high", "redis://h:6379/0") == 0
    assert priority_for("low", "redis://h:6379/0") == 9
    assert priority_for("high", "amqp://guest@h//") == 9
    assert priority_for("low", "amqp://guest@h//") == 0


def test_work_functions() -> None:
    from tasks import work
    from tasks.exceptions import ExternalServiceError

    assert work.count_primes(100) == 25
    assert work.count_primes(1) == 0
    assert [list(c) for c in work.chunked([1, 2, 3, 4, 5], 2)] == [[1, 2], [3, 4], [5]]
    assert work.normalise_record({"email": "A@x.io", "plan": "Team"}) == {
        "email": "a@x.io", "plan": "team", "seats": 1}
    with pytest.raises(KeyError):
        work.normalise_record({"email": "a@x.io"})
    with pytest.raises(ValueError):
        work.normalise_record({"email": "a@x.io", "plan": "team", "seats": "ten"})
    with pytest.raises(ExternalServiceError):
        work.call_external_service("svc", attempt=0, fail_first=1, latency=0)
    assert work.call_external_service("svc", attempt=1, fail_first=1, latency=0)["attempts"] == 2
    thumb = work.make_thumbnail(640, 480, 64, seed=1)
    assert (thumb["width"], thumb["height"]) == (64, 48)


def test_loadgen_decks_cover_every_kind() -> None:
    from tasks.loadgen import MIXES, deck

    rng = random.Random(1)
    for mix, weights in MIXES.items():
        cards = deck(weights, rng)
        assert sorted(set(cards)) == sorted(weights), mix
        assert len(cards) == sum(weights.values())


@pytest.mark.parametrize("kwargs", [
    {"rate": 0}, {"duration": 0}, {"max_tasks": 0}, {"mix": "nope"}, {"max_countdown": 0.5},
])
def test_loadgen_options_validate(kwargs: dict[str, Any]) -> None:
    from tasks.loadgen import LoadOptions

    with pytest.raises(ValueError):
        LoadOptions(**kwargs)


def test_signing_refuses_to_start_without_certs(tmp_path: Path) -> None:
    from celery import Celery
    from django.core.exceptions import ImproperlyConfigured
    from proj.signing import setup_signing

    with pytest.raises(ImproperlyConfigured, match="democerts"):
        setup_signing(Celery("x", set_as_current=False), tmp_path / "none")


def test_retry_countdown_has_a_floor(celery_app: Any) -> None:
    from unittest import mock

    from celery import Task

    flaky = celery_app.tasks["tasks.call_flaky_service"]
    with mock.patch.object(Task, "retry") as parent:
        flaky.retry(countdown=0)  # what full jitter draws half the time on the first retry
        flaky.retry(countdown=3)
        flaky.retry(eta="2030-01-01T00:00:00Z")
    countdowns = [c.args[5] for c in parent.call_args_list]
    assert countdowns == [0.5, 3, None]

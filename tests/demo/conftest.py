"""Fixtures for the demo Django project.

Django can be set up once per process, and the same pytest process runs the exporter's
suites, which build Celery apps of their own. So everything global (sys.path, environment,
Celery's current app) is set up by a package-scoped fixture and restored when the last demo
test has run, and nothing is set at import time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.demo.helpers import PROJ_DIR, purge_queues, redis_db_url

# Variables the project reads; any value inherited from the developer's shell is replaced
# or removed for the demo tests' duration, so they never reach a shared broker or database.
_MANAGED_ENV = (
    "DJANGO_SETTINGS_MODULE", "CELERY_BROKER_URL", "CELERY_BROKER_READ_URL",
    "CELERY_BROKER_WRITE_URL", "CELERY_RESULT_BACKEND", "DATABASE_URL", "DJANGO_DB_ENGINE",
    "DJANGO_SQLITE_PATH", "DJANGO_EMAIL_BACKEND", "DJANGO_EMAIL_FILE_PATH", "DEMO_SIGNING",
    "DEMO_CERTS_DIR", "CELERY_WORKER_PREFETCH_MULTIPLIER",
)
REDIS_DB = 3


@dataclass(frozen=True)
class DemoEnv:
    env: dict[str, str]
    base: Path
    broker_url: str
    mail_dir: Path

    def subprocess_env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _MANAGED_ENV}
        env.update(self.env)
        env.update(overrides)
        env["PYTHONUNBUFFERED"] = "1"
        return env


@pytest.fixture(scope="package")
def demo(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoEnv]:
    from celery import _state as celery_state

    base = tmp_path_factory.mktemp("demo")
    broker_url = redis_db_url(redis_url, REDIS_DB)
    env = {
        "DJANGO_SETTINGS_MODULE": "proj.settings",
        "CELERY_BROKER_URL": broker_url,
        "CELERY_RESULT_BACKEND": "django-db",
        "DJANGO_SQLITE_PATH": str(base / "demo.sqlite3"),
        "DJANGO_EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
        "DJANGO_EMAIL_FILE_PATH": str(base / "mail"),
        "DEMO_SIGNING": "0",
        "DEMO_CERTS_DIR": str(base / "certs"),
        "CELERY_WORKER_PREFETCH_MULTIPLIER": "1",
    }
    saved_env = {k: os.environ.get(k) for k in _MANAGED_ENV}
    saved_path = list(sys.path)
    # Celery keeps the "current" and "default" app in module globals; the Django fixup
    # makes proj's app the default. Put back whatever the exporter tests would have seen.
    saved_current = getattr(celery_state._tls, "current_app", None)
    saved_default = celery_state.default_app
    for k in _MANAGED_ENV:
        os.environ.pop(k, None)
    os.environ.update(env)
    sys.path.insert(0, str(PROJ_DIR))
    try:
        import django
        from django.conf import settings

        if settings.configured and settings.SETTINGS_MODULE != "proj.settings":
            pytest.skip("Django is already configured with other settings in this process")
        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        yield DemoEnv(env=env, base=base, broker_url=broker_url, mail_dir=base / "mail")
    finally:
        from django.db import connections

        connections.close_all()
        sys.path[:] = saved_path
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        celery_state._tls.current_app = saved_current
        celery_state.default_app = saved_default


@pytest.fixture(scope="package")
def celery_app(demo: DemoEnv) -> Any:
    from proj.celery import app

    # autodiscover_tasks() is lazy; a worker triggers it at start, a test has to ask.
    app.loader.import_default_modules()
    return app


@pytest.fixture
def broker(demo: DemoEnv) -> Iterator[Any]:
    """redis-py client on the demo's private broker database, queues empty before and after."""
    import redis

    client = redis.Redis.from_url(demo.broker_url)
    purge_queues(client)
    try:
        yield client
    finally:
        purge_queues(client)
        client.close()

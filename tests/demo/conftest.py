"""Fixtures for the demo Django project.

Django can be set up once per process, and the same pytest process runs the exporter's
suites, which build Celery apps of their own. So the work done once (a database directory,
django.setup(), migrate, importing the Celery app) is session-scoped and happens on first
use, and the process-wide state the demo needs (sys.path, environment, Celery's current
app) is applied around each demo module and restored after it, and nothing is set at import
time. A shuffled run (pytest-randomly) may put other packages' modules between two demo
modules; each demo module still finds the same database and app, whatever ran before it.
"""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def _demo_process_state(env: dict[str, str], app: Any = None) -> Iterator[None]:
    """The environment, sys.path and (given `app`) Celery's current app the demo expects.

    Everything is put back on exit. Celery keeps the "current" and "default" app in module
    globals, and the project's tasks are shared_task proxies that publish through whichever
    app is current: without this, a demo module run after an exporter test would publish
    through that test's app.
    """
    from celery import _state as celery_state

    saved_env = {k: os.environ.get(k) for k in _MANAGED_ENV}
    saved_path = list(sys.path)
    saved_current = getattr(celery_state._tls, "current_app", None)
    saved_default = celery_state.default_app
    for k in _MANAGED_ENV:
        os.environ.pop(k, None)
    os.environ.update(env)
    sys.path.insert(0, str(PROJ_DIR))
    if app is not None:
        app.set_current()
        app.set_default()
    try:
        yield
    finally:
        sys.path[:] = saved_path
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        celery_state._tls.current_app = saved_current
        celery_state.default_app = saved_default


@pytest.fixture(scope="session")
def _demo_setup(redis_url: str, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[tuple[DemoEnv, Any]]:
    """Once per session: Django's settings (and so the SQLite path) are fixed by the first
    django.setup(), so a second set-up with a new directory would send the workers to an
    empty database while this process kept using the first one."""
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
    with _demo_process_state(env):
        import django
        from django.conf import settings

        if settings.configured and settings.SETTINGS_MODULE != "proj.settings":
            pytest.skip("Django is already configured with other settings in this process")
        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        from proj.celery import app

        # autodiscover_tasks() is lazy; a worker triggers it at start, a test has to ask.
        app.loader.import_default_modules()
    try:
        yield DemoEnv(env=env, base=base, broker_url=broker_url, mail_dir=base / "mail"), app
    finally:
        from django.db import connections

        connections.close_all()


@pytest.fixture(scope="module", autouse=True)
def demo(_demo_setup: tuple[DemoEnv, Any]) -> Iterator[DemoEnv]:
    """The demo's process state for one module (autouse: every demo test imports proj)."""
    demo_env, app = _demo_setup
    with _demo_process_state(demo_env.env, app):
        yield demo_env


@pytest.fixture(scope="module")
def celery_app(demo: DemoEnv, _demo_setup: tuple[DemoEnv, Any]) -> Any:
    return _demo_setup[1]


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

"""The demo on PostgreSQL: migrations, a worker and the scenario against a throw-away database.

Runs only when DEMO_TEST_POSTGRES_URL names a server the tests may create databases on,
e.g. DEMO_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/postgres. The database in
the URL is only used to CREATE and DROP a private `cee_demo_<random>` database.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.demo.conftest import DemoEnv
from tests.demo.helpers import purge_queues, run_manage, run_scenario, run_worker

ADMIN_URL = os.environ.get("DEMO_TEST_POSTGRES_URL", "")

pytestmark = pytest.mark.skipif(
    not ADMIN_URL,
    reason="set DEMO_TEST_POSTGRES_URL=postgresql://user@host:port/db to run the demo on "
           "PostgreSQL (a throw-away database is created there and dropped afterwards)")


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    import psycopg
    from psycopg import sql

    name = f"cee_demo_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))


def test_demo_on_postgres(demo: DemoEnv, pg_url: str) -> None:
    import redis

    env = demo.subprocess_env(DATABASE_URL=pg_url)
    migrate = run_manage(env, "migrate", "--no-input", "-v", "0")
    assert migrate.returncode == 0, migrate.stderr

    client = redis.Redis.from_url(demo.broker_url)
    purge_queues(client)
    client.close()
    with run_worker(env, demo.base / "worker-pg.log", "demo-pg@127.0.0.1"):
        out = run_scenario(env)
    assert out["db_engine"] == "django.db.backends.postgresql"
    assert out["crunch"]["primes"] == 25
    assert out["bad"] == {"state": "FAILURE", "exc_type": "KeyError"}
    assert out["flaky"]["attempts"] == 2
    assert out["welcome_sent"] is True
    assert out["signups"] == 1

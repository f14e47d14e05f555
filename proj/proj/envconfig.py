"""Turn environment variables into settings values.

Kept free of Django imports so the parsing can be tested on its own and reused by scripts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

_TRUE = {"1", "true", "yes", "on"}
_POSTGRES_SCHEMES = {"postgres", "postgresql", "pgsql"}


def env_flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    value = env.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in _TRUE


def env_int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _sqlite(path: str | Path) -> dict[str, Any]:
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        # The web process, loadgen and every pool process write to the same file: WAL lets
        # readers proceed during a write, IMMEDIATE takes the write lock up front (no
        # deadlock-on-upgrade), and the timeout waits for the lock instead of failing.
        "OPTIONS": {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }


def _postgres(name: str, user: str, password: str, host: str, port: str) -> dict[str, Any]:
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": user,
        "PASSWORD": password,
        "HOST": host,
        "PORT": port,
        # Workers keep connections between tasks; Celery's Django fixup closes stale ones
        # before and after each task, and health checks catch a restarted server.
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
    }


def database_from_env(env: Mapping[str, str], base_dir: Path) -> dict[str, Any]:
    """The `default` database: DATABASE_URL, else DJANGO_DB_ENGINE + POSTGRES_*, else SQLite."""
    url = env.get("DATABASE_URL", "").strip()
    if url:
        return database_from_url(url)
    if env.get("DJANGO_DB_ENGINE", "").strip().lower() in {"postgres", "postgresql"}:
        return _postgres(
            env.get("POSTGRES_DB", "proj"),
            env.get("POSTGRES_USER", "postgres"),
            env.get("POSTGRES_PASSWORD", ""),
            env.get("POSTGRES_HOST", "127.0.0.1"),
            env.get("POSTGRES_PORT", "5432"),
        )
    return _sqlite(env.get("DJANGO_SQLITE_PATH") or base_dir / "db.sqlite3")


def database_from_url(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in _POSTGRES_SCHEMES:
        return _postgres(
            unquote(parts.path.lstrip("/")) or "postgres",
            unquote(parts.username or "postgres"),
            unquote(parts.password or ""),
            parts.hostname or "127.0.0.1",
            str(parts.port or 5432),
        )
    if scheme == "sqlite":
        # sqlite:////abs/path -> /abs/path, sqlite:///rel/path -> rel/path
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not path:
            raise ValueError("DATABASE_URL for sqlite needs a path, e.g. sqlite:////tmp/db.sqlite3")
        return _sqlite(path)
    raise ValueError(f"DATABASE_URL scheme {scheme!r} is not supported (use postgresql or sqlite)")


def broker_scheme(url: str) -> str:
    """'redis' for redis/rediss/sentinel URLs, 'amqp' for amqp/pyamqp/amqps, else the scheme."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in {"redis", "rediss", "sentinel"}:
        return "redis"
    if scheme in {"amqp", "amqps", "pyamqp", "librabbitmq"}:
        return "amqp"
    return scheme

"""Validated, frozen settings. The core never sees argparse objects, only `Config`."""

from __future__ import annotations

import importlib
import itertools
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from celery_events_exporter import metrics as m
from celery_events_exporter.labels import LabelPolicy
from celery_events_exporter.state import StateConfig

DEFAULT_PORT = 9540
REDIS_SCHEMES = frozenset({"redis", "rediss", "sentinel", "socket"})
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
WORKER_LABEL_MODES = ("full", "host", "regex", "none")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_PREFIX = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class ConfigError(ValueError):
    """A bad setting; the message names the flag."""


@dataclass(frozen=True)
class Config:
    broker_url: str
    transport_options: dict = field(default_factory=dict)
    events_exchange: str = "celeryev"
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    prefix: str = m.DEFAULT_PREFIX
    state: StateConfig = field(default_factory=StateConfig)
    static_labels: tuple[tuple[str, str], ...] = ()
    queues: tuple[str, ...] = ()
    probe_interval: float = 15.0
    probe_timeout: float = 5.0
    inspect: bool = True
    inspect_interval: float = 60.0
    rabbitmq_management_url: str | None = None
    rabbitmq_management_ca: str | None = None
    web_config_file: str | None = None
    max_message_bytes: int = 1 << 20
    ingest: str = "auto"  # auto | redis | kombu
    log_level: str = "INFO"
    # Beat schedule sources (beat.sources, validated by the CLI), read on the probe timer.
    beat_sources: tuple[Any, ...] = ()
    beat_grace: float = 60.0
    beat_max_entries: int = 1000

    @property
    def scheme(self) -> str:
        return urlsplit(self.broker_url).scheme.split("+", 1)[0]

    @property
    def is_redis(self) -> bool:
        return self.scheme in REDIS_SCHEMES

    @property
    def is_amqp(self) -> bool:
        return self.scheme in AMQP_SCHEMES

    @property
    def redacted_broker_url(self) -> str:
        return redact_url(self.broker_url)


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs and pages (several URLs: `;`-separated)."""
    return ";".join(_redact_one(part) for part in url.split(";"))


_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@]*):[^@/]*@")


def _redact_one(url: str) -> str:
    # A regex, not urlsplit: it must also hide the password of a URL too broken to parse.
    return _USERINFO.sub(r"\1:***@", url.strip())


def with_password(url: str, password: str) -> str:
    """Put a password read from a file/env into a broker URL that has none."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = quote(parts.username or "", safe="")
    netloc = f"{user}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def check_broker_url(url: str, flag: str = "--broker-url") -> None:
    if not url:
        raise ConfigError(f"{flag}: no broker URL given (set {flag}, "
                          "CELERY_EVENTS_EXPORTER_BROKER_URL, or --django-settings)")
    for part in url.split(";"):
        try:
            parts = urlsplit(part)
            _ = parts.port
        except ValueError as exc:
            raise ConfigError(f"{flag}: cannot parse {redact_url(part)!r}: {exc}") from None
        scheme = parts.scheme.split("+", 1)[0]
        if not scheme or "://" not in part:
            raise ConfigError(f"{flag}: {redact_url(part)!r} is not a URL (want e.g. "
                              "redis://host:6379/0 or amqp://user@host:5672//)")
        if scheme in REDIS_SCHEMES | AMQP_SCHEMES and scheme != "socket" and not parts.hostname:
            raise ConfigError(f"{flag}: {redact_url(part)!r} has no host")


def parse_buckets(text: str, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{flag}: {text!r} is not a comma-separated list of numbers") from None
    if not values:
        raise ConfigError(f"{flag}: empty bucket list")
    if any(v <= 0 or v != v or v == float("inf") for v in values):
        raise ConfigError(f"{flag}: bucket bounds must be positive and finite")
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ConfigError(f"{flag}: bucket bounds must be strictly increasing")
    return values


def parse_label_pairs(pairs: list[str], flag: str) -> tuple[tuple[str, str], ...]:
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not _LABEL_NAME.match(key) or key.startswith("__"):
            raise ConfigError(f"{flag}: {pair!r} is not NAME=VALUE with a valid label name")
        out.append((key, value))
    return tuple(out)


def parse_transport_options(pairs: list[str], flag: str) -> dict:
    """`key=value` pairs; values parse as JSON when they can (numbers, lists, booleans)."""
    import json

    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag}: {pair!r} is not KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def check_prefix(prefix: str) -> None:
    if prefix and not _PREFIX.match(prefix):
        raise ConfigError(f"--prefix: {prefix!r} is not a valid metric name prefix")


def worker_label_policy(mode: str, regex: str | None, max_length: int,
                        include: tuple[str, ...], exclude: tuple[str, ...]) -> LabelPolicy:
    if mode not in WORKER_LABEL_MODES:
        raise ConfigError(f"--worker-label: {mode!r} is not one of {', '.join(WORKER_LABEL_MODES)}")
    pattern = None
    if mode == "regex":
        if not regex:
            raise ConfigError("--worker-label-regex: required with --worker-label regex")
        try:
            pattern = re.compile(regex)
        except re.error as exc:
            raise ConfigError(f"--worker-label-regex: {exc}") from None
    if max_length < 8:
        raise ConfigError("--max-label-length: must be at least 8")
    return LabelPolicy(worker_mode=mode, worker_regex=pattern, max_length=max_length,
                       include_tasks=include, exclude_tasks=exclude)


def django_broker(settings_module: str,
                  flag: str = "--django-settings") -> tuple[str | None, dict, str | None]:
    """Broker URL, transport options and event exchange from a Django project's settings.

    Reads the module's attributes instead of calling django.setup(): the exporter must not
    import the project's apps (and their database connections) just to find the broker.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(settings_module)
    except Exception as exc:  # any import-time error in user code is a config problem
        raise ConfigError(f"{flag}: cannot import {settings_module!r}: {exc}") from None
    url = getattr(module, "CELERY_BROKER_URL", None)
    options = getattr(module, "CELERY_BROKER_TRANSPORT_OPTIONS", None) or {}
    exchange = getattr(module, "CELERY_EVENT_EXCHANGE", None)
    return url, dict(options), exchange

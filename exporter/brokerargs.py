"""Flags and helpers shared by the exporter's commands (`run` and `check`): the broker
flags, how they resolve to a URL, transport options and exchange, and logging set-up.

Both commands import this; neither imports the other.
"""

from __future__ import annotations

import argparse
import logging
import os

from celery_events_exporter.config import (
    ConfigError,
    check_broker_url,
    django_broker,
    parse_transport_options,
    with_password,
)

ENV_PREFIX = "CELERY_EVENTS_EXPORTER_"


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def env(flag: str, default: object = None) -> object:
    return os.environ.get(env_name(flag), default)


def env_list(flag: str) -> list[str]:
    value = os.environ.get(env_name(flag))
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def env_bool(flag: str, default: bool) -> bool:
    value = os.environ.get(env_name(flag))
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def add_broker_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("broker")
    g.add_argument("--broker-url", default=env("--broker-url"),
                   help="Celery broker URL: redis://, rediss://, sentinel://, amqp://, "
                        "amqps:// (default: the Django project's CELERY_BROKER_URL, else "
                        "$CELERY_BROKER_URL)")
    g.add_argument("--broker-password-file", default=env("--broker-password-file"),
                   help="read the broker password from this file instead of the URL")
    g.add_argument("--django-settings", default=env("--django-settings"),
                   help="Django settings module to read CELERY_BROKER_URL and "
                        "CELERY_BROKER_TRANSPORT_OPTIONS from (default: "
                        "$DJANGO_SETTINGS_MODULE, read only when no broker URL is given)")
    g.add_argument("--transport-option", action="append", metavar="KEY=VALUE",
                   default=env_list("--transport-option"),
                   help="kombu transport option, e.g. global_keyprefix=app: or "
                        "master_name=mymaster (repeatable; values parse as JSON when they can)")
    g.add_argument("--events-exchange", default=env("--events-exchange"),
                   help="Celery's event_exchange (default: celeryev)")


def resolve_broker(args: argparse.Namespace) -> tuple[str, dict, str]:
    url, options, exchange = args.broker_url, {}, None
    # Asked for by name, the settings also supply transport options next to a given URL.
    # Only inherited from DJANGO_SETTINGS_MODULE (set for the project, perhaps in an image
    # that lacks it), they are read when nothing else names the broker: an explicit URL wins.
    settings, flag = args.django_settings, "--django-settings"
    wanted = bool(settings) and (not url or not args.transport_option)
    if not settings and not url:
        settings, flag = os.environ.get("DJANGO_SETTINGS_MODULE"), "DJANGO_SETTINGS_MODULE"
        wanted = bool(settings)
    if wanted:
        d_url, d_options, exchange = django_broker(settings, flag)
        url = url or d_url
        options = d_options
    url = url or os.environ.get("CELERY_BROKER_URL")
    check_broker_url(url or "")
    if args.broker_password_file:
        try:
            with open(args.broker_password_file) as fh:
                password = fh.read().strip()
        except OSError as exc:
            raise ConfigError(f"--broker-password-file: {exc.strerror}") from None
        url = with_password(url, password)
    options.update(parse_transport_options(args.transport_option, "--transport-option"))
    return url, options, args.events_exchange or exchange or "celeryev"


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kombu and celery log connection URLs at DEBUG; keep them out of the exporter's log.
    for noisy in ("kombu", "celery", "amqp"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))

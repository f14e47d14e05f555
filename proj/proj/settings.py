"""Settings for the demo project.

Everything that differs between a laptop, CI and the compose stack comes from the
environment; the defaults are for a local run against the Redis on 127.0.0.1:6379.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from celery.schedules import crontab
from kombu import Queue

from proj.envconfig import broker_scheme, database_from_env, env_flag, env_int

BASE_DIR = Path(__file__).resolve().parent.parent
ENV = os.environ

# The fallback key only exists so the demo starts without setup; never deploy with it.
SECRET_KEY = ENV.get("DJANGO_SECRET_KEY", "demo-insecure-key-change-me")
DEBUG = env_flag(ENV, "DJANGO_DEBUG")
ALLOWED_HOSTS = [h.strip() for h in ENV.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
                 .split(",") if h.strip()]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django_celery_results",
    "tasks",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
ROOT_URLCONF = "proj.urls"
WSGI_APPLICATION = "proj.wsgi.application"
TEMPLATES: list[dict] = []

DATABASES = {"default": database_from_env(ENV, BASE_DIR)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

USE_TZ = True
TIME_ZONE = "UTC"

EMAIL_BACKEND = ENV.get("DJANGO_EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_FILE_PATH = ENV.get("DJANGO_EMAIL_FILE_PATH", str(BASE_DIR / ".demo" / "mail"))
DEFAULT_FROM_EMAIL = ENV.get("DJANGO_DEFAULT_FROM_EMAIL", "demo@example.com")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"tasks": {"handlers": ["console"], "level": ENV.get("DJANGO_LOG_LEVEL", "INFO"),
                          "propagate": False}},
}

# --- Celery ------------------------------------------------------------------------------
# Read by proj/celery.py through config_from_object(namespace="CELERY"). Celery itself also
# lets CELERY_BROKER_URL / CELERY_RESULT_BACKEND in the environment win over these values.

CELERY_BROKER_URL = ENV.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_RESULT_BACKEND = ENV.get("CELERY_RESULT_BACKEND", "django-db")
# Store task name, args and worker with each result so the rows explain themselves.
CELERY_RESULT_EXTENDED = True
CELERY_RESULT_EXPIRES = timedelta(days=1)
CELERY_TASK_TRACK_STARTED = True

# Events: the exporter is blind without them. task-sent comes from the producer (web,
# loadgen), everything else from workers.
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_EVENT_SERIALIZER = "json"

CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_ACCEPT_CONTENT = ["json"]

# One message reserved per pool process: a long task cannot hoard messages that an idle
# worker could run. The env override exists so the demo can show a prefetch backlog.
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int(ENV, "CELERY_WORKER_PREFETCH_MULTIPLIER", 1, 1)
# acks_late is set per task (only on idempotent ones); see tasks/tasks.py.
CELERY_TASK_ACKS_LATE = False
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_TASK_TIME_LIMIT = 300
CELERY_TASK_SOFT_TIME_LIMIT = 240
CELERY_WORKER_MAX_TASKS_PER_CHILD = 1000
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = TIME_ZONE

CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_QUEUES = (
    # RabbitMQ only orders messages inside a queue declared with x-max-priority; Redis
    # ignores the argument and uses the priority_steps transport option below instead.
    Queue("priority", routing_key="priority", queue_arguments={"x-max-priority": 10}),
    Queue("default", routing_key="default"),
    Queue("emails", routing_key="emails"),
    Queue("reports", routing_key="reports"),
)
CELERY_TASK_ROUTES = {
    "tasks.send_welcome_email": {"queue": "emails"},
    "tasks.send_password_reset": {"queue": "priority"},
    "tasks.slow_report": {"queue": "reports"},
    "tasks.process_batch": {"queue": "reports"},
    # Demo only: kills the worker that runs it (loadgen --scenario interrupted). Its own
    # queue, so only a worker started with -Q fragile can be taken down by it.
    "tasks.crash_worker": {"queue": "fragile"},
}
if broker_scheme(CELERY_BROKER_URL) == "redis":
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Poll queues in the worker's -Q order, so `-Q priority,...` serves it first.
        "queue_order_strategy": "priority",
        # Each step is its own list ("priority", "priority\x06\x163", ...); the exporter
        # sums them for celery_queue_length.
        "priority_steps": [0, 3, 6, 9],
        # Unacked (acks_late or reserved) messages come back after this long; must exceed
        # the longest task runtime and the furthest ETA/countdown the demo uses.
        "visibility_timeout": 3600,
    }

# Celery beat (`celery -A proj beat`, run by scripts/demo and docker-compose.yml) publishes
# these; the exporter reads this very dict (--beat-schedule proj.settings) to export each
# entry's last and next run and whether it is overdue. Beat publishes with the producer
# settings above, so task-sent events (CELERY_TASK_SEND_SENT_EVENT) mark every run.
CELERY_BEAT_SCHEDULE = {
    # An interval: the sweep for welcome emails lost between commit and publish.
    "resend-welcome-emails": {
        "task": "tasks.resend_welcome_emails",
        "schedule": timedelta(seconds=30),
    },
    # Crontabs (CELERY_TIMEZONE): old results out of the database, and a signup report.
    "cleanup-results": {
        "task": "tasks.cleanup_results",
        "schedule": crontab(minute="*/10"),
    },
    "signup-report": {
        "task": "tasks.signup_report",
        "schedule": crontab(minute="*/5"),
        "kwargs": {"minutes": 5},
    },
}

# --- Message signing ---------------------------------------------------------------------
# DEMO_SIGNING=1 signs task and control messages with the throw-away key pair from
# `python manage.py democerts`. Results stay JSON in the database and events stay JSON on
# the broker, which is what the exporter reads.
DEMO_SIGNING = env_flag(ENV, "DEMO_SIGNING")
DEMO_CERTS_DIR = Path(ENV.get("DEMO_CERTS_DIR") or BASE_DIR / "demo-certs")
if DEMO_SIGNING:
    CELERY_TASK_SERIALIZER = "auth"
    CELERY_ACCEPT_CONTENT = ["auth"]
    CELERY_RESULT_ACCEPT_CONTENT = ["json"]
    CELERY_SECURITY_KEY = str(DEMO_CERTS_DIR / "worker.key")
    CELERY_SECURITY_CERTIFICATE = str(DEMO_CERTS_DIR / "worker.crt")
    CELERY_SECURITY_CERT_STORE = str(DEMO_CERTS_DIR / "store")
    CELERY_SECURITY_DIGEST = "sha256"

"""The Celery app the integration tests run real workers with.

Configured from the environment so a test can point a worker subprocess and its own
producer at a private broker: CEE_BROKER_URL, CEE_EVENTS_EXCHANGE, CEE_PREFETCH.
"""

from __future__ import annotations

import os
import time

from celery import Celery
from kombu import Queue

app = Celery("cee_tests", broker=os.environ.get("CEE_BROKER_URL", "redis://127.0.0.1:6379/15"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_backend=None,
    task_ignore_result=True,
    worker_send_task_events=True,
    task_send_sent_event=True,
    event_exchange=os.environ.get("CEE_EVENTS_EXCHANGE", "celeryev"),
    worker_prefetch_multiplier=int(os.environ.get("CEE_PREFETCH", "1")),
    task_default_queue="default",
    task_queues=[Queue("default"), Queue("other"),
                 Queue("prio", queue_arguments={"x-max-priority": 10})],
    task_create_missing_queues=True,
    broker_transport_options={"queue_order_strategy": "priority"},
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


# Celery beat for tests/integration/test_beat.py (`celery -A tests.support.celeryapp beat`);
# the exporter reads the same schedule (--beat-schedule tests.support.celeryapp:app).
app.conf.beat_schedule = {
    "it-tick": {"task": "tests.add", "schedule": float(os.environ.get("CEE_BEAT_EVERY", "1.5")),
                "args": (1, 2)},
}


@app.task(name="tests.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="tests.fail")
def fail(kind: str = "value") -> None:
    if kind == "key":
        raise KeyError("missing")
    raise ValueError("boom")


@app.task(name="tests.flaky", bind=True, max_retries=2)
def flaky(self, succeed_on: int = 2) -> int:
    if self.request.retries < succeed_on:
        raise self.retry(countdown=0.2, exc=RuntimeError("try again"))
    return self.request.retries


@app.task(name="tests.sleep")
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


# Integration-test switches (tests/integration): task events off for the "events disabled"
# scenario, and extra kombu transport options (JSON object, e.g. global_keyprefix) merged
# over the defaults above.
if os.environ.get("CEE_TASK_EVENTS", "1") == "0":
    app.conf.worker_send_task_events = False
if os.environ.get("CEE_TRANSPORT_OPTIONS"):
    import json as _json

    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        **_json.loads(os.environ["CEE_TRANSPORT_OPTIONS"]),
    }


# Reliability soak (tests/reliability): CEE_DROP_TERMINAL_PCT=1 makes this worker drop 1% of
# its terminal task events (task-succeeded, task-failed) on purpose, like a lossy event path.
_DROP_TERMINAL = float(os.environ.get("CEE_DROP_TERMINAL_PCT") or 0) / 100
if _DROP_TERMINAL:
    import random as _random

    from celery.events.dispatcher import EventDispatcher as _Dispatcher

    _rng = _random.Random(os.getpid())
    _send = _Dispatcher.send

    def _lossy_send(self, type, *args, **kwargs):
        if type in ("task-succeeded", "task-failed") and _rng.random() < _DROP_TERMINAL:
            return None
        return _send(self, type, *args, **kwargs)

    _Dispatcher.send = _lossy_send

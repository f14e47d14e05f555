"""Message signing for real: Celery's auth serializer with the demo's throw-away keys.

The signing worker and producer run in their own interpreters (DEMO_SIGNING=1 changes
kombu's global serializer registry, which the rest of this pytest process must not see).
The negative cases publish from this process, without signing.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.demo.conftest import DemoEnv
from tests.demo.helpers import Worker, run_scenario, run_worker, wait_until


@pytest.fixture(scope="module")
def certs(demo: DemoEnv) -> Path:
    from proj.signing import generate_demo_certs

    directory = demo.base / "certs"
    generate_demo_certs(directory)
    return directory


@pytest.fixture(scope="module")
def signed_env(demo: DemoEnv, certs: Path) -> dict[str, str]:
    return demo.subprocess_env(DEMO_SIGNING="1", DEMO_CERTS_DIR=str(certs))


@pytest.fixture(scope="module")
def signing_worker(demo: DemoEnv, signed_env: dict[str, str], celery_app: Any
                   ) -> Iterator[Worker]:
    import redis

    from tests.demo.helpers import purge_queues

    client = redis.Redis.from_url(demo.broker_url)
    purge_queues(client)
    client.close()
    with run_worker(signed_env, demo.base / "worker-signed.log", "demo-signed@127.0.0.1") as w:
        yield w


def _events_channel(broker_url: str) -> str:
    db = broker_url.rsplit("/", 1)[1] or "0"
    return f"/{db}.celeryev/*"


def test_signed_tasks_round_trip_and_events_stay_json(signing_worker: Worker, demo: DemoEnv,
                                                     signed_env: dict[str, str]) -> None:
    import redis

    client = redis.Redis.from_url(demo.broker_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(_events_channel(demo.broker_url))
    try:
        out = run_scenario(signed_env)
        assert out["signing"] is True and out["task_serializer"] == "auth"
        assert out["crunch"]["primes"] == 25
        assert out["bad"] == {"state": "FAILURE", "exc_type": "KeyError"}
        assert out["flaky"]["attempts"] == 2
        assert out["welcome_sent"] is True

        # The exporter's view: every event on the wire is plain JSON, signing or not.
        seen: set[str] = set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not set(out["task_ids"]) <= seen:
            msg = pubsub.get_message(timeout=0.5)
            if msg is None or msg["type"] != "pmessage":
                continue
            envelope = json.loads(msg["data"])
            assert envelope["content-type"] == "application/json"
            body = json.loads(base64.b64decode(envelope["body"]))
            for event in body if isinstance(body, list) else [body]:
                if event.get("type") in {"task-succeeded", "task-failed"}:
                    seen.add(event["uuid"])
        assert set(out["task_ids"]) <= seen
    finally:
        pubsub.close()
        client.close()


def test_unsigned_message_is_rejected(signing_worker: Worker, celery_app: Any) -> None:
    from django_celery_results.models import TaskResult

    # This process does not sign: a plain JSON task message. The worker's error names the
    # body, not the id, hence the distinctive argument.
    res = celery_app.send_task("tasks.crunch_numbers", args=(7919,), queue="default")
    wait_until(lambda: "Refusing to deserialize untrusted content of type json" in
               (log := signing_worker.log()) and "[[7919]" in log, 10, what="rejection logged")
    time.sleep(0.5)
    assert not TaskResult.objects.filter(task_id=res.id).exists()
    assert f"tasks.crunch_numbers[{res.id}] succeeded" not in signing_worker.log()


def test_tampered_signed_message_is_rejected(signing_worker: Worker, celery_app: Any,
                                            certs: Path) -> None:
    from celery.security.certificate import Certificate, FSCertStore
    from celery.security.key import PrivateKey
    from celery.security.serialization import SecureSerializer
    from celery.utils.serialization import b64decode, b64encode
    from django_celery_results.models import TaskResult
    from kombu.utils.uuid import uuid

    # A serializer object of our own, not registered with kombu, so this process keeps
    # publishing plain JSON everywhere else.
    signer = SecureSerializer(PrivateKey((certs / "worker.key").read_text()),
                              Certificate((certs / "worker.crt").read_text()),
                              FSCertStore(str(certs / "store")), digest="sha256")
    task_id = uuid()
    message = celery_app.amqp.as_task_v2(task_id, "tasks.crunch_numbers", args=(100,))
    signed = signer.serialize(message.body)
    assert signer.deserialize(signed)[0] == [100]  # the untampered form verifies
    tampered = b64encode(b64decode(signed).replace(b"[[100]", b"[[999]"))
    assert tampered != signed

    queue = celery_app.amqp.queues["default"]
    with celery_app.producer_or_acquire() as producer:
        producer.publish(tampered, exchange=queue.exchange, routing_key=queue.routing_key,
                         declare=[queue], headers=message.headers,
                         content_type="application/data", content_encoding="utf-8",
                         **message.properties)

    wait_until(lambda: "Can't decode message body" in signing_worker.log()
               and task_id in signing_worker.log(), 10, what="decode error logged")
    log = signing_worker.log()
    # Celery 5.7 wraps the InvalidSignature in a confusing TypeError (its reraise_errors
    # catches a module), but the verdict is right: SecurityError, message dropped.
    assert "SecurityError" in log and "InvalidSignature" in log
    time.sleep(0.5)
    assert not TaskResult.objects.filter(task_id=task_id).exists()
    assert f"tasks.crunch_numbers[{task_id}] succeeded" not in signing_worker.log()


def test_exporter_inspect_probe_explains_signed_workers(signing_worker: Worker,
                                                        demo: DemoEnv) -> None:
    """A signing worker refuses the exporter's unsigned broadcast: the probe says so and why,
    and backs off so the worker's log is not flooded."""
    from celery_events_exporter.pipeline import Pipeline
    from celery_events_exporter.probes import ProbeResults, ProbeRunner
    from celery_events_exporter.probes.workers import MAX_BACKOFF, InspectProbe
    from celery_events_exporter.state import State

    probe = InspectProbe(demo.broker_url, {}, Pipeline(State()), 60, 2, live_workers=lambda: 1)
    results = ProbeResults()
    runner = ProbeRunner([probe], results)
    try:
        for expected in (120, 240):
            runner.run_once(probe)
            status = results.status["inspect"]
            assert not status.success
            assert "signed messages" in status.last_error, status.last_error
            assert "--no-inspect" in status.last_error
            assert probe.interval == expected
        assert probe.interval <= 60 * MAX_BACKOFF
        assert "Refusing to deserialize untrusted content" in signing_worker.log()
    finally:
        probe.close()

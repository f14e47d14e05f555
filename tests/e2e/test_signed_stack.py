"""`scripts/demo --signing`: the local stack with signed task and control messages.

Celery signs task messages, not events, so the exporter must see the signed load exactly as
it sees the plain one; its inspect broadcast is off (signing workers refuse unsigned control
messages), and no worker may have refused anything the stack itself sent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from scripts.stack import PROJ, temporary_stack

pytestmark = [pytest.mark.slow, pytest.mark.redis]

DEADLINE_SECONDS = 120


def test_signed_stack_is_seen_by_the_exporter() -> None:
    with temporary_stack(signing=True, prometheus=False, alertmanager=False, rate=6,
                         load_seed=11, duration=DEADLINE_SECONDS) as stack:
        certs = stack.options.workdir / "certs"
        assert (certs / "worker.key").is_file() and (certs / "store").is_dir()
        # What web, workers and load run with: the app configured from the stack's env.
        conf = subprocess.run(
            [sys.executable, "-c", "from proj.celery import app; c = app.conf; "
             "print(c.task_serializer, c.accept_content, c.event_serializer)"],
            cwd=PROJ, env={**os.environ, **stack.django_env()}, capture_output=True,
            text=True, timeout=60, check=True).stdout.strip().split(maxsplit=2)
        assert conf == ["auth", "['auth']", "json"], conf
        deadline = time.monotonic() + DEADLINE_SECONDS
        metrics: dict[str, float] = {}
        while time.monotonic() < deadline:
            assert not stack.dead(), f"{stack.dead()} exited; logs in {stack.options.workdir}"
            metrics = stack.metrics()
            if (metrics.get("celery_task_succeeded_total", 0) >= 10
                    and metrics.get("celery_task_failed_total", 0) >= 1
                    and metrics.get("celery_task_sent_total", 0) >= 10):
                break
            time.sleep(1)
        else:
            pytest.fail(f"the exporter did not see the signed load: {metrics}")
        assert metrics["celery_worker_up"] == 2
        assert metrics.get("celery_exporter_probe_errors_total", 0) == 0
        assert "celery_worker_pool_processes" not in metrics, "inspect must be off"
        logs = {s.name: s.log.read_text(errors="replace") for s in stack.services
                if s.name.startswith("worker")}
        for name, log in logs.items():
            assert "Refusing to deserialize" not in log, f"{name} refused a message:\n{log}"
            assert "Can't decode message body" not in log, f"{name}:\n{log}"

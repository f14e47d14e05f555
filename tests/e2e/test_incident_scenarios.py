"""End to end: `scripts/demo --scenario ...` produces each incident with real Celery
mechanics, and each one's alert reaches Alertmanager.

One demo stack (real Redis, workers, exporter, Prometheus with the rules generated from
the demo's config, Alertmanager) runs every scenario at once: they use different queues
and workers, so they do not disturb each other. `long` runs a report for minutes on the
`reports` worker; `interrupted` sends the demo-only crash task that SIGKILLs its worker
(w4, restarted by the stack); `waiting` publishes to a queue no worker consumes; `missed`
runs the stack without beat, so the schedule's entries go overdue. The ghost
worker has no scenario: see docs/demo.md, "Incident scenarios".
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from scripts.stack import CRASH_QUEUE, UNCONSUMED_QUEUE
from tests.e2e.demostack import Demo, running_demo, wait_for

# From the stack's start: the slowest is `long` (20 s limit + 15 s for, on a loaded machine).
DEADLINE_SECONDS = 150
# scenario -> (alert, labels the firing alert must carry)
EXPECTED: dict[str, tuple[str, dict[str, str]]] = {
    "long": ("CeleryTaskRunningTooLong", {"name": "tasks.slow_report", "queue": "reports"}),
    "interrupted": ("CeleryTasksInterrupted",
                    {"name": "tasks.crash_worker", "queue": CRASH_QUEUE,
                     "worker": f"w4@{socket.gethostname()}"}),
    "waiting": ("CeleryQueueOldestWaitingHigh", {"queue": UNCONSUMED_QUEUE}),
    # no beat: the 30 s entry is due 30 s after the exporter first read the schedule
    "missed": ("CeleryPeriodicTaskOverdue",
               {"entry": "resend-welcome-emails", "name": "tasks.resend_welcome_emails"}),
}

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.prometheus]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    # A light background load: the scenarios are the point, the rest shows they stand out.
    with running_demo(["--duration", "600", "--rate", "2", "--seed", "5", "--exporter-port",
                       "0", "--scrape-interval", "2s", "--scenario", ",".join(EXPECTED)],
                      tmp_path_factory.mktemp("scenarios")) as demo:
        yield demo


def active(demo: Demo, alertname: str) -> list[dict[str, str]]:
    """Labels of the active (not silenced or inhibited) alerts of that name in Alertmanager."""
    return [a["labels"] for a in demo.alertmanager_alerts()
            if a["labels"].get("alertname") == alertname and a["status"]["state"] == "active"]


@pytest.mark.parametrize("scenario", list(EXPECTED))
def test_scenario_fires_its_alert_in_alertmanager(demo: Demo, scenario: str) -> None:
    alertname, labels = EXPECTED[scenario]
    left = DEADLINE_SECONDS - (time.monotonic() - demo.started)
    got = wait_for(f"{alertname} active in Alertmanager", lambda: active(demo, alertname),
                   demo, timeout=max(left, 5))
    assert isinstance(got, list)
    # The scenario's incident, once. Others of the name may follow from it: the long report
    # holds the only pool slot of the `reports` worker, so that queue starves too.
    assert [{k: a.get(k) for k in labels} for a in got].count(labels) == 1, got


def test_the_crashed_worker_is_back(demo: Demo) -> None:
    # The crash killed w4 (the alert above says the exporter saw it die mid-task); the stack
    # restarted it, as a supervisor would, and it heartbeats again.
    wait_for("w4 restarted", lambda: any("restarted worker4 (exit -9)" in line
                                         for line in demo.output), demo, timeout=60)
    worker = EXPECTED["interrupted"][1]["worker"]
    wait_for("w4 up again", lambda: demo.query(f'celery_worker_up{{worker="{worker}"}} == 1'),
             demo, timeout=60)

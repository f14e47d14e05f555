"""Telling users what is wrong: task events disabled, broker unreachable (`/readyz`,
metrics, and the `check` command)."""

from __future__ import annotations

import re
import time

import pytest

from tests.integration.conftest import make_broker
from tests.integration.harness import (
    Broker,
    Exporter,
    Procs,
    Worker,
    producer,
    run_check,
    tail,
)
from tests.support.servers import free_port

pytestmark = pytest.mark.slow

CHECK_SECONDS = 8


def test_events_disabled_detected_and_check_reports(
        broker: Broker, procs: Procs, request: pytest.FixtureRequest) -> None:
    """Two namespaces side by side: `off` runs a worker without task events, `on` a worker
    with -E. Queues differ too, since RabbitMQ's task queues are shared by the vhost."""
    off, on = broker, make_broker(request, broker.kind)
    exp_off = Exporter(procs, off, name="exporter-off")
    exp_on = Exporter(procs, on, name="exporter-on")
    quiet = Worker(procs, off, "quiet", queues=["default"], concurrency=1, events=False)
    loud = Worker(procs, on, "loud", queues=["other"], concurrency=1)
    exp_off.wait_up(quiet.node)
    exp_on.wait_up(loud.node)

    check_off = run_check(procs, off, CHECK_SECONDS, "check-off")
    check_on = run_check(procs, on, CHECK_SECONDS, "check-on")
    # Tasks throughout the listening window, so 'processed' grows between heartbeats.
    with producer(off) as p_off, producer(on) as p_on:
        deadline = time.monotonic() + CHECK_SECONDS + 1
        while time.monotonic() < deadline and (check_off.alive() or check_on.alive()):
            p_off.send("tests.add", 1, 1)
            p_on.send("tests.add", 1, 1, queue="other")
            time.sleep(0.5)

    assert check_off.wait_exit(30) == 1, tail(check_off.log, 60)
    out = check_off.log.read_text()
    problems = [line for line in out.splitlines() if line.startswith("PROBLEM")]
    assert any("task events" in line and "-E" in line for line in problems), out
    assert "Traceback" not in out, out

    assert check_on.wait_exit(30) == 0, tail(check_on.log, 60)
    out = check_on.log.read_text()
    assert "PROBLEM" not in out and "Traceback" not in out, out
    assert "Workers: 1" in out and loud.node in out, out
    assert re.search(r"^Task events: on \(\d+ seen\)", out, re.M), out
    assert re.search(r"^task-sent events: on \(\d+ seen\)", out, re.M), out
    assert re.search(r"^Queues: .*\bother=\d+", out, re.M), out
    assert "Everything looks right." in out, out

    m = exp_off.wait(lambda m: m.value("celery_exporter_task_events_missing") == 1,
                     "celery_exporter_task_events_missing 1")
    assert m.get("celery_worker_task_events_missing", worker=quiet.node) == 1
    assert m.series("celery_task_received_total") == []
    # Ready all the same: the exporter cannot turn the fleet's events on, and a restart
    # would not either; the warning stays in the body, the metric and the log.
    code, text = exp_off.get("/readyz")
    assert code == 200 and "-E" in text, (code, text)

    # A new series reads 0 on the first scrape that shows it (so rate() sees its first
    # increment): wait for the value rather than take one scrape.
    m = exp_on.wait(lambda m: m.total("celery_task_succeeded_total", worker=loud.node) > 0,
                    "the loud worker's successes")
    assert m.value("celery_exporter_task_events_missing") == 0
    assert m.get("celery_worker_task_events_missing", worker=loud.node) == 0
    assert m.total("celery_task_succeeded_total", worker=loud.node) > 0
    code, text = exp_on.get("/readyz")
    assert code == 200, (code, text)


def test_broker_unreachable(broker: Broker, procs: Procs) -> None:
    port = free_port()  # nothing listens here
    url = (f"redis://127.0.0.1:{port}/0" if broker.is_redis
           else f"amqp://guest:guest@127.0.0.1:{port}//")
    dead = Broker(broker.kind, url, broker.exchange)

    check = run_check(procs, dead, 2)
    exporter = Exporter(procs, dead, wait_connected=False)
    assert check.wait_exit(30) == 1, tail(check.log)
    out = check.log.read_text()
    assert "PROBLEM: could not connect to the broker" in out, out
    assert "Traceback" not in out, out

    # The exporter runs anyway and says so.
    m = exporter.wait(lambda m: m.get("celery_exporter_broker_connected") == 0
                      and m.value("celery_exporter_broker_reconnects_total", default=-1) >= 0,
                      "the exporter answering with broker_connected 0", timeout=15)
    assert m.series("celery_worker_up") == []
    code, text = exporter.get("/readyz")
    assert code == 503 and "not connected" in text, (code, text)
    code, _ = exporter.get("/healthz")
    assert code == 200
    assert exporter.proc.alive()


def test_check_with_no_task_running_asks_the_workers(
        broker: Broker, procs: Procs, request: pytest.FixtureRequest) -> None:
    """No task runs while `check` listens, so no event can tell whether task events are on:
    `check` asks the workers' configuration (`inspect conf`) instead of calling that fine.
    `off`: a worker started without -E and worker_send_task_events False; `on`: a worker
    whose configuration sends them."""
    off, on = broker, make_broker(request, broker.kind)
    exp_off = Exporter(procs, off, name="exporter-off")
    exp_on = Exporter(procs, on, name="exporter-on")
    quiet = Worker(procs, off, "idle-quiet", queues=["default"], concurrency=1, events=False)
    loud = Worker(procs, on, "idle-loud", queues=["other"], concurrency=1)
    exp_off.wait_up(quiet.node)
    exp_on.wait_up(loud.node)

    check_off = run_check(procs, off, CHECK_SECONDS, "check-idle-off")
    check_on = run_check(procs, on, CHECK_SECONDS, "check-idle-on")
    assert check_off.wait_exit(60) == 1, tail(check_off.log, 60)
    out = check_off.log.read_text()
    assert "Everything looks right" not in out, out
    problems = [line for line in out.splitlines() if line.startswith("PROBLEM")]
    assert any(quiet.node in line and "worker_send_task_events" in line
               for line in problems), out
    assert "Traceback" not in out, out

    assert check_on.wait_exit(60) == 0, tail(check_on.log, 60)
    out = check_on.log.read_text()
    assert "PROBLEM" not in out and "Traceback" not in out, out
    assert re.search(rf"^Task events: on in the configuration of every worker "
                     rf"\(1: {re.escape(loud.node)}\)", out, re.M), out
    # No task was published: whether producers send task-sent cannot be known, so the
    # report does not claim that everything is right.
    assert re.search(r"^UNKNOWN: .*task_send_sent_event", out, re.M), out
    assert "Everything looks right" not in out, out

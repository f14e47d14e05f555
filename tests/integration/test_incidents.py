"""Incident signals on real workers and brokers (issue 12): a long task's running age, a
task killed with its worker, a queue nobody consumes."""

from __future__ import annotations

import time

import pytest

from tests.integration.harness import Broker, Exporter, Metrics, Procs, Worker, producer

pytestmark = pytest.mark.slow

SLEEP = "tests.sleep"


def age(m: Metrics, queue: str = "default") -> float:
    return m.value("celery_task_oldest_running_age_seconds", -1.0, name=SLEEP, queue=queue)


def test_long_task_shows_running_and_a_growing_age(broker: Broker, procs: Procs) -> None:
    exporter = Exporter(procs, broker)
    node = Worker(procs, broker, "longrun", concurrency=1).node
    exporter.wait_up(node)
    with producer(broker) as p:
        p.send(SLEEP, 8)
        m = exporter.wait(lambda m: m.get("celery_task_running", name=SLEEP,
                                          queue="default") == 1 and age(m) > 3,
                          "one tests.sleep running, older than the 3 s threshold")
        first = age(m)
        time.sleep(2.5)  # ages run to the last tick (up to a second behind)
        m = exporter.scrape()
        assert m.get("celery_task_running", name=SLEEP, queue="default") == 1
        assert age(m) >= first + 1, "the age grows while the task runs"
        m = exporter.wait(lambda m: m.value("celery_task_succeeded_total", name=SLEEP,
                                            queue="default", worker=node) == 1,
                          "the task finished")
        assert m.get("celery_task_running", name=SLEEP, queue="default") is None
        assert m.get("celery_task_interrupted_total", name=SLEEP, queue="default",
                     worker=node) is None, "a finished task was not interrupted"


def test_sigkill_mid_task_counts_it_interrupted(broker: Broker, procs: Procs) -> None:
    exporter = Exporter(procs, broker, "--worker-timeout", "3")
    worker = Worker(procs, broker, "crashy", concurrency=1)
    node = worker.node
    exporter.wait_up(node)
    with producer(broker) as p:
        p.send(SLEEP, 60, queue="other")
        exporter.wait(lambda m: m.get("celery_task_running", name=SLEEP, queue="other") == 1,
                      "tests.sleep running on queue other")
    worker.kill()
    m = exporter.wait(lambda m: m.get("celery_task_interrupted_total", name=SLEEP,
                                      queue="other", worker=node) == 1,
                      "celery_task_interrupted_total 1 for the killed worker's task")
    assert m.get("celery_worker_up", worker=node) == 0
    assert m.get("celery_task_running", name=SLEEP, queue="other") is None
    assert m.total("celery_task_interrupted_total") == 1


def test_queue_without_consumer_ages_then_drains_to_zero(broker: Broker, procs: Procs) -> None:
    exporter = Exporter(procs, broker)
    # Consumes `default` only: `other` has no consumer.
    node = Worker(procs, broker, "elsewhere", queues=["default"], concurrency=1).node
    exporter.wait_up(node)

    def waiting(m: Metrics) -> float:
        return m.value("celery_queue_oldest_waiting_age_seconds", -1.0, queue="other")

    with producer(broker) as p:
        for i in range(3):
            p.send("tests.add", i, i, queue="other")
        m = exporter.wait(lambda m: waiting(m) >= 2 and
                          m.get("celery_queue_length", queue="other") == 3,
                          "the oldest message of `other` waiting 2 s, 3 in the queue")
        first = waiting(m)
        time.sleep(2.5)  # ages run to the last tick (up to a second behind)
        assert waiting(exporter.scrape()) >= first + 1, "the age grows while nobody consumes"
        assert exporter.scrape().value("celery_queue_oldest_waiting_age_seconds",
                                       queue="default") == 0

    drainer = Worker(procs, broker, "drainer", queues=["other"], concurrency=1).node
    exporter.wait_up(drainer)
    exporter.wait(lambda m: m.total("celery_task_succeeded_total", queue="other") == 3
                  and waiting(m) == 0 and m.get("celery_queue_length", queue="other") == 0,
                  "the queue drained (probe and events agree): oldest waiting age 0")

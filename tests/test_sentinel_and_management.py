"""Broker discovery and the RabbitMQ management probe against real servers.

Sentinel: a private redis-server plus a private Sentinel watching it; the exporter is given
only the sentinel:// URL and the master name, finds the master and reads its events.
Management: a private RabbitMQ node with the management plugin; the probe reads unacked
counts and consumer utilisation from its HTTP API.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from celery import Celery

from celery_events_exporter.config import Config
from celery_events_exporter.ingest import make_consumer
from celery_events_exporter.pipeline import Pipeline
from celery_events_exporter.probes import ProbeResults, ProbeRunner
from celery_events_exporter.probes.queues import ManagementProbe
from celery_events_exporter.state import State
from tests.support.servers import RabbitServer, free_port, redis_server, stop_proc, wait_for_port


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out: {what}")


@pytest.mark.redis
def test_sentinel_url_finds_the_master_and_reads_events() -> None:
    with redis_server() as master:
        workdir = Path(tempfile.mkdtemp(prefix="cee-sentinel-"))
        port = free_port()
        conf = workdir / "sentinel.conf"
        conf.write_text(f"port {port}\nbind 127.0.0.1\n"
                        f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n")
        sentinel = subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(port, 10, sentinel)
            url = f"sentinel://127.0.0.1:{port}/0"
            config = Config(broker_url=url, transport_options={"master_name": "mymaster"})
            pipeline = Pipeline(State())
            consumer = make_consumer(config, pipeline)
            consumer.start()
            try:
                _wait(lambda: pipeline.connected, 15, "connected through Sentinel")
                app = Celery("t", broker=url, set_as_current=False)
                app.conf.broker_transport_options = {"master_name": "mymaster"}
                with app.connection_for_write() as conn:
                    dispatcher = app.events.Dispatcher(conn, hostname="celery@s1")
                    _wait(lambda: (dispatcher.send("worker-heartbeat", freq=2.0, active=0,
                                                   processed=0) or True)
                          and "celery@s1" in pipeline.state.workers, 15, "event via master")
                    dispatcher.close()
            finally:
                consumer.stop()
        finally:
            stop_proc(sentinel)
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.amqp
@pytest.mark.slow
def test_management_probe_reads_unacked_and_utilisation() -> None:
    mgmt_port = free_port()
    rabbit = RabbitServer(free_port(), free_port(), plugins=("rabbitmq_management",),
                          config=f"management.tcp.port = {mgmt_port}\n"
                                 "management.tcp.ip = 127.0.0.1\n"
                                 "collect_statistics_interval = 500\n")
    try:
        rabbit.start(90)
        wait_for_port(mgmt_port, 90)
        app = Celery("t", broker=rabbit.url, set_as_current=False)
        with app.connection_for_write() as conn:
            channel = conn.channel()
            channel.queue_declare("work", durable=True, auto_delete=False)
            for _ in range(5):
                channel.basic_publish(channel.prepare_message(b"x"), routing_key="work")
            # An unacked delivery: a consumer that takes messages and never acks them.
            channel.basic_qos(0, 3, False)
            channel.basic_consume("work", callback=lambda m: None)
            conn.drain_events(timeout=2)
            results = ProbeResults()
            probe = ManagementProbe(f"http://guest:guest@127.0.0.1:{mgmt_port}", rabbit.url,
                                    1, 5)
            runner = ProbeRunner([probe], results)

            def unacked() -> bool:
                runner.run_once(probe)
                return results.queues.unacked.get("work") == 3.0

            _wait(unacked, 60, f"unacked=3 (last {results.queues.unacked}, "
                               f"status {results.status})")
            assert "work" in results.queues.utilisation or results.status["rabbitmq_management"]
            probe.close()
    finally:
        rabbit.stop()
        shutil.rmtree(rabbit.dir, ignore_errors=True)

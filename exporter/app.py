"""Wires one exporter together from a Config: state, consumer, probes, collector, server."""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from celery_events_exporter.collector import CeleryCollector
from celery_events_exporter.config import Config
from celery_events_exporter.http import ExporterServer, serve
from celery_events_exporter.ingest import make_consumer
from celery_events_exporter.pipeline import Pipeline
from celery_events_exporter.probes import Probe, ProbeResults, ProbeRunner
from celery_events_exporter.state import State
from celery_events_exporter.webconfig import WebConfig
from celery_events_exporter.webgate import Limits

log = logging.getLogger(__name__)

READY_EVENT_WINDOW = 120.0


class Exporter:
    def __init__(self, config: Config, web: WebConfig | None = None,
                 protect_health: bool = False, limits: Limits | None = None) -> None:
        self.config = config
        self.state = State(config.state)
        self.pipeline = Pipeline(self.state, config.max_message_bytes)
        self.consumer = make_consumer(config, self.pipeline)
        self.results = ProbeResults()
        self.probes = ProbeRunner(self._probes(), self.results)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(CeleryCollector(self.pipeline, self.results, config.prefix,
                                               config.static_labels))
        for extra in (ProcessCollector, PlatformCollector, GCCollector):
            extra(registry=self.registry)
        self.server = ExporterServer((config.host, config.port), self.registry, self.readiness,
                                     web, protect_health,
                                     about=f"broker {config.redacted_broker_url}",
                                     limits=limits)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def known_queues(self) -> set[str]:
        with self.pipeline.lock:
            queues = set(self.state.queues_seen)
            for worker in self.state.workers.values():
                queues.update(worker.queues)
        return queues | set(self.config.queues)

    def live_workers(self) -> int:
        with self.pipeline.lock:
            return sum(1 for w in self.state.workers.values() if w.up)

    def _probes(self) -> list[Probe]:
        cfg = self.config
        probes: list[Probe] = []
        if cfg.probe_interval > 0:
            if cfg.is_redis:
                from celery_events_exporter.probes.queues import RedisQueueProbe
                from celery_events_exporter.redisconf import parse

                probes.append(RedisQueueProbe(parse(cfg.broker_url, cfg.transport_options),
                                              self.known_queues, cfg.probe_interval,
                                              cfg.probe_timeout))
            elif cfg.is_amqp:
                from celery_events_exporter.probes.queues import AmqpQueueProbe

                probes.append(AmqpQueueProbe(cfg.broker_url, cfg.transport_options,
                                             self.known_queues, cfg.probe_interval,
                                             cfg.probe_timeout))
            if cfg.rabbitmq_management_url:
                from celery_events_exporter.probes.queues import ManagementProbe

                probes.append(ManagementProbe(cfg.rabbitmq_management_url, cfg.broker_url,
                                              cfg.probe_interval, cfg.probe_timeout,
                                              cfg.rabbitmq_management_ca))
        if cfg.inspect and cfg.inspect_interval > 0:
            from celery_events_exporter.probes.workers import InspectProbe

            probes.append(InspectProbe(cfg.broker_url, cfg.transport_options, self.pipeline,
                                       cfg.inspect_interval, cfg.probe_timeout,
                                       self.live_workers))
        if cfg.beat_sources:
            from celery_events_exporter.beat.probe import BeatProbe

            probes.append(BeatProbe(cfg.beat_sources, self.pipeline, cfg.state.labels,
                                    cfg.probe_interval, cfg.probe_timeout, cfg.beat_grace,
                                    cfg.beat_max_entries))
        return probes

    def readiness(self) -> tuple[bool, str]:
        pipeline = self.pipeline
        now = time.time()
        with pipeline.lock:
            connected = pipeline.connected
            last_event = self.state.last_event
            workers = sum(1 for w in self.state.workers.values() if w.up)
            missing = self.state.task_events_missing
        if not connected:
            return False, "not connected to the broker"
        # Fleet configuration the exporter cannot change (task events off on some workers)
        # is a warning, not unreadiness: failing would only restart or unroute the exporter.
        warning = ("; warning: workers process tasks but send no task events: start them "
                   "with -E or set worker_send_task_events=True") if missing else ""
        if workers:
            return True, f"connected; {workers} live worker(s){warning}"
        if last_event and now - last_event < READY_EVENT_WINDOW:
            return True, f"connected; events flowing{warning}"
        return False, ("connected, but no events and no workers yet (workers send heartbeats "
                       "even without -E: are any running against this broker?)")

    def start(self) -> None:
        log.info("celery-events-exporter listening on %s:%d, broker %s (%s ingest)",
                 self.config.host, self.port, self.config.redacted_broker_url,
                 self.consumer.name)
        serve(self.server)
        self.consumer.start()
        self.probes.start()

    def stop(self) -> None:
        self.consumer.stop()
        self.probes.stop()
        self.server.shutdown()
        self.server.server_close()

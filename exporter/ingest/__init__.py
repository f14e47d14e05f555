"""Broker consumers: read the Celery event stream and feed the pipeline."""

from __future__ import annotations

from celery_events_exporter.config import Config
from celery_events_exporter.ingest.base import Consumer
from celery_events_exporter.pipeline import Pipeline

LEAN_AMQP_SCHEMES = frozenset({"amqp", "pyamqp"})


def make_consumer(config: Config, pipeline: Pipeline) -> Consumer:
    """The Redis fast path for Redis URLs, the lean AMQP reader for plain-TCP AMQP URLs,
    kombu for everything else (or when asked with --ingest kombu). amqps:// stays on kombu
    until the lean reader has been tested behind TLS."""
    if config.ingest == "redis" or (config.ingest == "auto" and config.is_redis):
        from celery_events_exporter.ingest.redis import RedisConsumer

        return RedisConsumer(config, pipeline)
    if config.ingest == "auto" and config.scheme in LEAN_AMQP_SCHEMES:
        from celery_events_exporter.ingest.amqp import AmqpConsumer

        return AmqpConsumer(config, pipeline)
    from celery_events_exporter.ingest.kombu import KombuConsumer

    return KombuConsumer(config, pipeline)

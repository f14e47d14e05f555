"""celery-events-exporter: Prometheus metrics from the Celery event stream."""

__version__ = "0.1.0"

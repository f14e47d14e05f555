"""Prometheus recording and alerting rules for celery-events-exporter.

`python -m celery_events_exporter.alerts --out alerts` regenerates the checked-in
`alerts/celery-rules.yml`.
"""

from .config import RulesConfig
from .rules import build, render

__all__ = ["RulesConfig", "build", "render"]

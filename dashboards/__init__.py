"""Grafana dashboards for celery-events-exporter, generated with grafanalib.

`python -m celery_events_exporter.dashboards --out dashboards/json` regenerates the checked-in JSON.
"""

from .common import Options
from .generate import build_all, render_all
from .queries import panel_queries

__all__ = ["Options", "build_all", "panel_queries", "render_all"]

"""Render every dashboard to deterministic JSON and keep `dashboards/json/` in sync."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafanalib import core as g
from grafanalib._gen import DashboardEncoder

from . import overview, queues, tasks, workers
from .common import Options

JSON_DIR = Path(__file__).resolve().parent / "json"

# filename -> builder; order is the order of `docs/dashboards.md`.
DASHBOARDS: dict[str, Callable[[Options], g.Dashboard]] = {
    overview.FILENAME: overview.build,
    tasks.FILENAME: tasks.build,
    workers.FILENAME: workers.build,
    queues.FILENAME: queues.build,
}


def to_data(dashboard: g.Dashboard) -> dict[str, Any]:
    """Plain JSON data (dicts and lists only) for one grafanalib dashboard."""
    data: dict[str, Any] = json.loads(json.dumps(dashboard.to_json_data(), cls=DashboardEncoder))
    return data


def dumps(data: dict[str, Any]) -> str:
    """The one serialisation we check in: sorted keys, indent 2, trailing newline."""
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def build_all(opts: Options | None = None) -> dict[str, dict[str, Any]]:
    opts = opts or Options()
    return {name: to_data(build(opts)) for name, build in DASHBOARDS.items()}


def render_all(opts: Options | None = None) -> dict[str, str]:
    return {name: dumps(data) for name, data in build_all(opts).items()}


def write(out: Path, opts: Options | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all(opts).items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale(out: Path, opts: Options | None = None) -> list[str]:
    """Files under `out` that differ from what the sources generate now."""
    bad = []
    for name, text in render_all(opts).items():
        path = out / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            bad.append(str(path))
    return bad

"""Draw a dashboard as a PNG from a real Prometheus, the way Grafana would lay it out.

Grafana cannot run on our machines, so the README's pictures are made here: every panel's
PromQL (variables substituted exactly as `queries.panel_queries` does) is run as a range
query and drawn with matplotlib on the panel's own grid position, unit and legend format.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from celery_events_exporter.dashboards.queries import _iter_panels, substitute, variable_values

_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
ROW_HEIGHT_PX = 30  # Grafana's grid unit
BACKGROUND, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
PALETTE = ["#73bf69", "#f2cc0c", "#5794f2", "#ff780a", "#b877d9", "#f2495c", "#8ab8ff",
           "#96d98d", "#fade2a", "#ca95e5"]


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def _legend(fmt: str | None, metric: Mapping[str, str]) -> str:
    if fmt and not _LEGEND.search(fmt):
        return fmt
    if not fmt:
        inner = ", ".join(f"{k}={v}" for k, v in sorted(metric.items()) if k != "__name__")
        return inner or "value"
    return _LEGEND.sub(lambda m: metric.get(m.group(1), ""), fmt)


def _format(value: float, unit: str | None) -> str:
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if abs(value) < 1 else f"{value:.2f} s"
    suffix = unit.split(":", 1)[1] if unit and unit.startswith("suffix:") else ""
    return f"{value:.3g}{(' ' + suffix) if suffix else ''}"


def render(dashboard: Mapping[str, Any], prometheus: str, out: Path, start: float, end: float,
           variables: Mapping[str, str] | None = None, width_px: int = 1800) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = variable_values(dashboard, variables)
    panels = [p for p in _iter_panels(dashboard.get("panels") or []) if p.get("gridPos")]
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    height_px = bottom * ROW_HEIGHT_PX + 60
    dpi = 100
    fig = plt.figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, facecolor=BACKGROUND)
    fig.text(0.01, 1 - 20 / height_px, dashboard.get("title", ""), color=TEXT, fontsize=16,
             va="top", weight="bold")
    step = max(2.0, (end - start) / 300)
    for panel in panels:
        grid = panel["gridPos"]
        left = grid["x"] / 24
        top = (grid["y"] * ROW_HEIGHT_PX + 50) / height_px
        w, h = grid["w"] / 24, grid["h"] * ROW_HEIGHT_PX / height_px
        if panel.get("type") == "row":
            fig.text(left + 0.005, 1 - top - h / 2, panel.get("title", ""), color=TEXT,
                     fontsize=12, va="center", weight="bold")
            continue
        # Leave room on the left for tick labels, which matplotlib draws outside the axes.
        pad = 0.004 if panel.get("type") == "stat" else 0.035
        ax = fig.add_axes((left + pad, 1 - top - h + 0.02, w - pad - 0.004, h - 0.04),
                          facecolor=PANEL)
        ax.set_title(panel.get("title", ""), color=TEXT, fontsize=9, loc="left")
        unit = ((panel.get("fieldConfig") or {}).get("defaults") or {}).get("unit")
        series = []
        for target in panel.get("targets") or []:
            if not target.get("expr") or target.get("hide"):
                continue
            expr = substitute(target["expr"], values)
            for result in query_range(prometheus, expr, start, end, step):
                points = [(float(t), float(v)) for t, v in result["values"]
                          if v not in ("NaN", "+Inf", "-Inf")]
                series.append((_legend(target.get("legendFormat"), result["metric"]), points))
        for spine in ax.spines.values():
            spine.set_color(GRID)
        ax.tick_params(colors=TEXT, labelsize=7)
        if panel.get("type") == "stat":
            ax.set_xticks([])
            ax.set_yticks([])
            last = [(label, pts[-1][1]) for label, pts in series if pts][:3]
            if len(last) > 1:  # Grafana's value_and_name: each value under its legend
                pairs = [f"{label} {_format(v, unit)}" for label, v in last]
                # Narrow panels stack the pairs, as Grafana does.
                wide = (panel.get("gridPos") or {}).get("w", 24) * 6 >= sum(map(len, pairs))
                text = "   ".join(pairs) if wide else "\n".join(pairs)
                size = 12 if wide else 9
            else:
                text = _format(last[0][1], unit) if last else "No data"
                size = 18
            ax.text(0.5, 0.45, text, color=PALETTE[0] if last else TEXT, fontsize=size,
                    ha="center", va="center", transform=ax.transAxes, weight="bold")
            continue
        if panel.get("type") == "table":
            ax.set_xticks([])
            ax.set_yticks([])
            rows = [label for label, pts in series if pts][:12]
            for i, label in enumerate(rows or ["No data"]):
                ax.text(0.02, 0.9 - i * 0.08, label, color=TEXT, fontsize=8,
                        transform=ax.transAxes, va="top", family="monospace")
            continue
        if not any(pts for _, pts in series):
            ax.text(0.5, 0.5, "No data", color=TEXT, ha="center", va="center",
                    transform=ax.transAxes)
        for i, (label, pts) in enumerate(series[:10]):
            if pts:
                xs = [t - end for t, _ in pts]
                ax.plot(xs, [v for _, v in pts], color=PALETTE[i % len(PALETTE)], lw=1.2,
                        label=label[:40])
        ax.grid(color=GRID, lw=0.5)
        ax.set_xlabel("seconds before the snapshot", color=TEXT, fontsize=7)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
            lambda v, _pos, u=unit: _format(v, u)))
        if series:
            ax.legend(fontsize=6, loc="upper left", facecolor=PANEL, labelcolor=TEXT,
                      framealpha=0.6, edgecolor=GRID)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, facecolor=BACKGROUND)
    plt.close(fig)
    return out

"""Draw a dashboard as a PNG from a real Prometheus, the way Grafana would lay it out.

Grafana cannot run on our machines, so the README's pictures are made here: every panel's
PromQL (variables substituted exactly as `queries.panel_queries` does) is run as a range
query and drawn with matplotlib on the panel's own grid position, unit and legend format.
Stats take their colour from the panel's value mappings and thresholds, as Grafana's do,
and time series draw their threshold lines: a picture that paints a 79% success ratio
green would not be Grafana's.
"""

from __future__ import annotations

import json
import re
import urllib.error
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
# Grafana's named colours (dark theme).
NAMED = {"green": "#73bf69", "red": "#f2495c", "orange": "#ff9830", "yellow": "#fade2a",
         "blue": "#5794f2", "purple": "#b877d9", "text": TEXT}
_SI = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    try:
        with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}",
                                    timeout=30) as r:
            body = json.load(r)
    except urllib.error.HTTPError as exc:
        # Prometheus says why in the body (bad_data, execution): name the query with it.
        raise RuntimeError(f"{expr}: HTTP {exc.code}: {exc.read()[:500]!r}") from None
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


def _short(value: float, decimals: int | None = None) -> str:
    for size, prefix in _SI:
        if abs(value) >= size:
            return f"{value / size:.{1 if decimals is None else decimals}f} {prefix}"
    if decimals is not None:
        return f"{value:.{decimals}f}"
    return f"{value:.0f}" if value == int(value) else f"{value:.3g}"


def _format(value: float, unit: str | None, decimals: int | None = None) -> str:
    """A value as Grafana shows it in `unit` (the units our dashboards use)."""
    if unit == "percentunit":
        return f"{value * 100:.{1 if decimals is None else decimals}f}%"
    if unit == "s":
        if abs(value) < 1:
            return f"{value * 1000:.0f} ms"
        if abs(value) < 60:
            return f"{value:.{2 if decimals is None else decimals}f} s"
        if abs(value) < 3600:
            return f"{value / 60:.1f} min"
        return f"{value / 3600:.1f} hour"
    suffix = unit.split(":", 1)[1] if unit and unit.startswith("suffix:") else ""
    return _short(value, decimals) + (f" {suffix}" if suffix else "")


def _color(name: str | None, default: str = TEXT) -> str:
    if not name:
        return default
    return NAMED.get(name, name if name.startswith("#") else default)


def _threshold_color(value: float, steps: list[dict[str, Any]]) -> str | None:
    """The colour of the last step at or below `value` (the base step has value None)."""
    color = None
    for step in steps:
        if step.get("value") is None or value >= step["value"]:
            color = step.get("color")
    return color


def _mapped(value: float, mappings: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """(text, colour) from a value mapping, or (None, None) when none matches."""
    for mapping in mappings:
        if mapping.get("type") != "value":
            continue
        for key, result in (mapping.get("options") or {}).items():
            try:
                hit = float(key) == value
            except ValueError:
                continue
            if hit:
                return result.get("text"), result.get("color")
    return None, None


def stat_cell(value: float, defaults: Mapping[str, Any]) -> tuple[str, str]:
    """(text, colour) Grafana's stat panel shows for `value`: mappings first, then the
    unit and the thresholds' colour."""
    text, color = _mapped(value, defaults.get("mappings") or [])
    steps = (defaults.get("thresholds") or {}).get("steps") or []
    if text is None:
        text = _format(value, defaults.get("unit"), defaults.get("decimals"))
    if color is None:
        color = _threshold_color(value, steps)
    return text, _color(color, PALETTE[0])


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
        defaults = (panel.get("fieldConfig") or {}).get("defaults") or {}
        unit = defaults.get("unit")
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
            if not last:
                ax.text(0.5, 0.45, "No data", color=TEXT, fontsize=18, ha="center",
                        va="center", transform=ax.transAxes, weight="bold")
                continue
            cells = [(label, *stat_cell(v, defaults)) for label, v in last]
            if len(cells) > 1:  # Grafana's value_and_name: each value under its legend
                # Narrow panels stack the pairs, as Grafana does.
                width = sum(len(label) + len(text) + 1 for label, text, _ in cells)
                wide = (panel.get("gridPos") or {}).get("w", 24) * 6 >= width
                for i, (label, text, color) in enumerate(cells):
                    x, y = ((i + 0.5) / len(cells), 0.45) if wide else (
                        0.5, 0.8 - i * 0.6 / max(1, len(cells) - 1))
                    ax.text(x, y, f"{label} {text}", color=color, fontsize=12 if wide else 9,
                            ha="center", va="center", transform=ax.transAxes, weight="bold")
            else:
                _, text, color = cells[0]
                ax.text(0.5, 0.45, text, color=color, fontsize=18, ha="center", va="center",
                        transform=ax.transAxes, weight="bold")
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
        style = (defaults.get("custom") or {}).get("thresholdsStyle") or {}
        if style.get("mode") == "line":
            for level in (defaults.get("thresholds") or {}).get("steps") or []:
                if level.get("value") is not None:
                    ax.axhline(level["value"], color=_color(level.get("color")), lw=0.8,
                               ls="--")
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

"""Every panel's PromQL with dashboard variables replaced by concrete values.

The end-to-end test runs these against a real Prometheus; doing the substitution here,
from the generated JSON, means it checks exactly what Grafana would send.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

# Grafana's built-ins. 1m = 4 x the 15 s scrape interval we ship, the smallest window
# `$__rate_interval` resolves to for it.
BUILTINS: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)(?::\w+)?\]\]|\$(\w+)")
_ALL = "$__all"
# Characters Grafana escapes when a multi-value variable is interpolated into a regex.
_REGEX_SPECIAL = re.compile(r"([\\^$*+?.()|{}\[\]])")

Value = str | Sequence[str]


def _iter_panels(panels: Sequence[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for panel in panels:
        yield panel
        yield from _iter_panels(panel.get("panels") or [])


def _format(value: Value) -> str:
    if isinstance(value, str):
        return value
    values = list(value)
    if len(values) == 1:
        return values[0]
    return "(" + "|".join(_REGEX_SPECIAL.sub(r"\\\1", v) for v in values) + ")"


def variable_values(dashboard: Mapping[str, Any],
                    overrides: Mapping[str, Value] | None = None) -> dict[str, str]:
    """Concrete values for every variable: overrides, else the saved current value, with
    "All" resolved to the variable's allValue."""
    values: dict[str, str] = dict(BUILTINS)
    for var in dashboard.get("templating", {}).get("list", []):
        current = (var.get("current") or {}).get("value")
        if isinstance(current, list) and current == [_ALL]:
            current = _ALL
        if current == _ALL:
            current = var.get("allValue") or ".*"
        if current is not None:
            values[var["name"]] = _format(current)
    for name, value in (overrides or {}).items():
        values[name] = _format(value)
    return values


def substitute(expr: str, values: Mapping[str, str]) -> str:
    missing: list[str] = []

    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in values:
            missing.append(name)
            return match.group(0)
        return values[name]

    out = _VAR.sub(repl, expr)
    if missing:
        raise KeyError(f"no value for dashboard variable(s) {sorted(set(missing))} in {expr!r}")
    return out


def panel_queries(dashboard_json: Mapping[str, Any],
                  variables: Mapping[str, Value] | None = None) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every visible target, variables substituted.

    `variables` maps a variable name to a value: a string is inserted as is (it may be a
    regex, since our selectors use `=~`); a list is joined as Grafana does for a
    multi-value selection. Unset variables take the dashboard's saved value ("All" -> its
    allValue); `__rate_interval` and friends default to `BUILTINS`.
    """
    values = variable_values(dashboard_json, variables)
    out = []
    for panel in _iter_panels(dashboard_json.get("panels") or []):
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if expr and not target.get("hide"):
                out.append((panel.get("title", ""), substitute(expr, values)))
    return out


def variable_queries(dashboard_json: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(variable name, query) for the query variables, unsubstituted (they reference the
    variables before them)."""
    return [(v["name"], v["query"]) for v in dashboard_json.get("templating", {}).get("list", [])
            if v.get("type") == "query"]

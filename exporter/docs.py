"""Markdown for the README, generated from the catalogue and the parser so it cannot drift.

    python -m celery_events_exporter.docs metrics   # the metric table
    python -m celery_events_exporter.docs flags     # the flag table
"""

from __future__ import annotations

import argparse
import sys

from celery_events_exporter import metrics as m


def metric_table(prefix: str = m.DEFAULT_PREFIX) -> str:
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for metric in m.ALL:
        labels = ", ".join(f"`{label}`" for label in metric.labels) or "-"
        rows.append(f"| `{metric.full(prefix)}` | {metric.kind} | {labels} | {metric.help} |")
    return "\n".join(rows) + "\n"


def flag_table() -> str:
    from celery_events_exporter.cli import ENV_PREFIX, build_parser

    rows = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for action in build_parser()._actions:
        if not action.option_strings or action.dest in ("help", "version"):
            continue
        flag = max(action.option_strings, key=len)
        env = ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()
        default = action.default
        if isinstance(default, list):
            default = ",".join(default) or None
        if isinstance(action, argparse._StoreTrueAction):
            default = "off"
        shown = "-" if default in (None, "") else f"`{default}`"
        text = (action.help or "").replace("|", "\\|")
        rows.append(f"| `{flag}` | `{env}` | {shown} | {text} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "metrics"
    sys.stdout.write(metric_table() if what == "metrics" else flag_table())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

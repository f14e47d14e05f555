"""`celery-events-exporter rules`: generate the Prometheus recording and alerting rules."""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from .config import RulesConfig
from .rules import RULES_FILE, render


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "rules",
        help="generate Prometheus recording and alerting rules",
        description=f"Write {RULES_FILE} (recording + alerting rules) with the given "
                    f"selectors and thresholds.",
    )
    p.add_argument("--out", type=Path, default=Path("alerts"), metavar="DIR",
                   help=f"directory to write {RULES_FILE} into (default: %(default)s)")
    p.add_argument("--check", action="store_true",
                   help=f"do not write; exit 1 if DIR/{RULES_FILE} differs from the generator")
    # One flag per config field, so a new threshold cannot be added without its flag.
    for f in fields(RulesConfig):
        default = f.default if f.default is not MISSING else None
        help_ = f"{f.metadata.get('help', '')} (default: %(default)s)"
        if isinstance(default, bool):  # type=bool would read "False" as true
            p.add_argument(_flag(f.name), dest=f.name, default=default, help=help_,
                           action=argparse.BooleanOptionalAction)
        else:
            p.add_argument(_flag(f.name), dest=f.name, type=type(default), default=default,
                           help=help_)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = RulesConfig(**{f.name: getattr(args, f.name) for f in fields(RulesConfig)})
    except ValueError as exc:
        print(f"rules: {exc}", file=sys.stderr)
        return 1
    text = render(cfg)
    path: Path = args.out / RULES_FILE
    if args.check:
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current != text:
            print(f"stale: {path} (regenerate with the same flags)", file=sys.stderr)
            return 1
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m celery_events_exporter.alerts")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["rules", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))

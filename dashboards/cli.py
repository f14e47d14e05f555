"""`celery-events-exporter dashboards`: generate the Grafana JSON and optionally upload it."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from celery_events_exporter.metrics import DEFAULT_PREFIX

from . import generate, upload
from .common import Options


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "dashboards",
        help="generate Grafana dashboards (and optionally upload them)",
        description="Generate the Celery Grafana dashboards as JSON files and/or upload "
                    "them through Grafana's HTTP API.",
    )
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="write the JSON files into DIR (default: dashboards/json when not "
                        "uploading)")
    p.add_argument("--check", action="store_true",
                   help="do not write; exit 1 if the files in --out differ from the sources")
    p.add_argument("--datasource", default=Options.datasource,
                   help="default Prometheus datasource name (default: %(default)s)")
    p.add_argument("--job-selector", default=Options.job_selector,
                   help="label matchers selecting the exporter's series, without braces "
                        "(default: %(default)s)")
    p.add_argument("--cluster-label", default=Options.cluster_label,
                   help="label that tells clusters apart; adds a cluster variable "
                        "(default: none)")
    p.add_argument("--prefix", default=DEFAULT_PREFIX,
                   help="the exporter's metric prefix (default: %(default)s)")
    p.add_argument("--upload", metavar="GRAFANA_URL", default="",
                   help="upload to this Grafana, e.g. https://grafana.example.com")
    p.add_argument("--grafana-token", default=os.environ.get("GRAFANA_TOKEN", ""),
                   help="service account token (default: $GRAFANA_TOKEN)")
    p.add_argument("--grafana-user", default=os.environ.get("GRAFANA_USER", ""),
                   help="basic auth user (default: $GRAFANA_USER)")
    p.add_argument("--grafana-password", default=os.environ.get("GRAFANA_PASSWORD", ""),
                   help="basic auth password (default: $GRAFANA_PASSWORD)")
    p.add_argument("--folder", default="",
                   help="Grafana folder title to upload into, created if missing "
                        "(default: General)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        opts = Options(datasource=args.datasource, job_selector=args.job_selector,
                       cluster_label=args.cluster_label, prefix=args.prefix)
    except ValueError as exc:
        print(f"dashboards: {exc}", file=sys.stderr)
        return 1
    out: Path | None = args.out
    if out is None and not args.upload:
        out = Path("dashboards/json")

    if args.check:
        if out is None:
            print("dashboards: --check needs --out", file=sys.stderr)
            return 1
        bad = generate.stale(out, opts)
        for path in bad:
            print(f"stale: {path}", file=sys.stderr)
        return 1 if bad else 0

    if out is not None:
        for path in generate.write(out, opts):
            print(f"wrote {path}")

    if args.upload:
        auth = upload.Auth(token=args.grafana_token, user=args.grafana_user,
                           password=args.grafana_password)
        try:
            urls = upload.upload(args.upload, auth, generate.build_all(opts), args.folder)
        except upload.UploadError as exc:
            print(f"dashboards: upload failed: {exc}", file=sys.stderr)
            return 1
        for url in urls:
            print(f"uploaded {url}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m celery_events_exporter.dashboards")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["dashboards", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))

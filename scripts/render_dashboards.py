"""Run the demo stack for a while and draw every dashboard from its real Prometheus data.

    python -m scripts.render_dashboards [--seconds 300] [--out docs/img] \
        [--scenario long,interrupted,waiting,missed]

The pictures in the README are made this way (Grafana itself cannot run on our machines).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from celery_events_exporter.dashboards.render import render
from scripts.stack import ROOT, temporary_stack


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.render_dashboards")
    p.add_argument("--seconds", type=float, default=300, help="how long the load runs first")
    p.add_argument("--rate", type=float, default=10)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    p.add_argument("--scenario", default="",
                   help="demo incidents to show on the incident panels (scripts/demo --scenario)")
    args = p.parse_args(argv)
    scenarios = tuple(n.strip() for n in args.scenario.split(",") if n.strip())
    with temporary_stack(rate=args.rate, load_seed=3, scrape_interval="5s",
                         alertmanager=False, scenarios=scenarios) as stack:
        started = time.time()
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            stack.restart_exited()  # the `interrupted` scenario's crashed worker
            dead = stack.dead()
            if dead:
                raise SystemExit(f"{dead} exited during the run")
            time.sleep(min(2, max(0.1, deadline - time.monotonic())))
        end = time.time()
        for path in sorted((ROOT / "dashboards" / "json").glob("*.json")):
            dashboard = json.loads(path.read_text())
            out = render(dashboard, stack.prometheus_url, args.out / f"{path.stem}.png",
                         started, end, {"job": "celery"})
            print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

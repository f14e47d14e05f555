#!/usr/bin/env python3
"""The benchmark of docs/performance.md: ours against the peers, one run, one table.

Drives the side-by-side harness in benchmarks/harness (compare.sh, measure.py, flood.py,
ceiling.py, summarize.py; CEE_BENCH_HARNESS=DIR runs another copy of it instead, e.g. the
shared one, as a cross-check by hand) and adds what it lacks:

  compare     compare.sh: every peer and ours, --runs rounds, Redis pub/sub unlimited
  default     compare.sh --redis-default: publisher flat out, Redis' default pub/sub
              output buffer limits (a slow subscriber is disconnected and loses events)
  burst       measure.py --burst for ours: the exporter is stopped while the flood
              is published, then drains it: events/s on one core, CPU per event
  paced       paced.py: one event per Redis message at 500 and 2,000 events/s, ours and
              the peers side by side (A, and C the bare redis-py loop), CPU per event
  scrape      scrape.py: /metrics latency at >= 10k series while ingesting, in the text
              format and as Prometheus 2.x and 3.x ask (OpenMetrics), side by side
  unfinished  unfinished.py: RSS with 1M tasks that never finish (in-flight cap)
  amqp        amqp_path.py: the kombu path on a private RabbitMQ, CPU per event (live
              and draining a backlog)
  disconnect  disconnect.py: Redis drops our subscription mid-flood; time to resubscribe,
              events lost in the gap, what the metrics and the log say
  stages      stages.py: per-stage CPU of the Redis fast path, replayed offline, and the
              cost of one scrape at ~11k series (render time, lock hold)
  profile     pyspy_stages.py: py-spy on the live exporter during a flood (and while it
              drains a backlog), samples summed per stage

The peers' environments come from PyPI (the pins compare.sh uses) and are cached under
$CEE_BENCH_CACHE (default ~/.cache/celery-events-exporter/venvs), so reruns start at once;
the flood publisher runs in this project's environment (celery 5.7, redis-py).

    .venv/bin/python benchmarks/run.py                     # the full run (~30 min)
    .venv/bin/python benchmarks/run.py --size tiny         # ours only, 2,000 tasks (<1 min)
    .venv/bin/python benchmarks/run.py --parts compare,scrape --peers "A" -n 20000

Results land in benchmarks/results/<time>/ (results.jsonl from the harness, extras.jsonl
from the extra parts, report.md = what is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import HARNESS, REPO, free_port, load, redis_server

PARTS = ("compare", "default", "burst", "paced", "scrape", "unfinished", "amqp", "disconnect",
         "stages", "profile")
CACHE = Path(os.environ.get("CEE_BENCH_CACHE",
                            Path.home() / ".cache" / "celery-events-exporter" / "venvs"))
# The same pins as the harness' compare.sh (peer A only starts with its own lock).
PEER_VENVS = {
    "A": ("venv-a", ["prometheus-exporter-celery==0.11.2", "celery==5.5.2", "kombu==5.5.2",
                     "redis==5.2.1"]),
    "B": ("venv-b", ["flower==2.2.0", "kombu[redis]", "packaging"]),
}
LABELS = {
    "peerA-prometheus-exporter-celery": "prometheus-exporter-celery 0.11.2",
    "peerB-flower": "flower 2.2.0",
    "ceiling-redis-py": "bare redis-py + json (ceiling)",
    "ours": "celery-events-exporter (ours)",
}
SIZES = {
    "full": dict(n=100_000, runs=3, default_n=100_000, peers="A B C",
                 parts="compare,default,burst,paced,scrape,unfinished,amqp,disconnect,stages,"
                       "profile",
                 burst_n=100_000, paced_n=30, scrape_n=60_000, unfinished_n=1_000_000,
                 unfinished_cap=100_000, amqp_n=50_000, disconnect_n=40_000,
                 stages_n=20_000, profile_n=100_000),
    "tiny": dict(n=2_000, runs=1, default_n=2_000, peers="",
                 parts="compare,paced,scrape,unfinished",
                 burst_n=2_000, paced_n=3, scrape_n=2_000, unfinished_n=20_000,
                 unfinished_cap=5_000, amqp_n=2_000, disconnect_n=4_000, stages_n=2_000,
                 profile_n=2_000),
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')} load {load()}] {msg}", file=sys.stderr,
          flush=True)


def ensure_venv(name: str, packages: list[str]) -> Path:
    path = CACHE / name
    if not (path / "bin" / "python").exists():
        log(f"building {path} ({' '.join(packages)}) from PyPI")
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["python3", "-m", "venv", str(path)], check=True)
        subprocess.run([str(path / "bin" / "pip"), "install", "-q", *packages], check=True)
    return path


def prepare_work(work: Path, peers: str) -> None:
    """compare.sh builds venv-flood/venv-a/venv-b in $WORK unless they exist: link ours."""
    work.mkdir(parents=True, exist_ok=True)
    links = {"venv-flood": Path(sys.prefix)}
    for peer in peers.split():
        if peer in PEER_VENVS:
            name, packages = PEER_VENVS[peer]
            links[name] = ensure_venv(name, packages)
    for name, target in links.items():
        link = work / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)


def ours_cmd(port: int) -> str:
    exe = Path(sys.executable).with_name("celery-events-exporter")
    return f"{shlex.quote(str(exe))} --broker-url {{broker}} --host 127.0.0.1 --port {port}"


def compare(work: Path, n: int, runs: int, peers: str, redis_default: bool) -> None:
    port = free_port()
    cmd = [str(HARNESS / "compare.sh"), "-n", str(n), "--runs", str(runs), "--peers", peers,
           "--ours", ours_cmd(port), "--ours-url", f"http://127.0.0.1:{port}/metrics"]
    if redis_default:
        cmd.append("--redis-default")
    env = {**os.environ, "WORK": str(work), "REDIS_PORT": str(free_port())}
    log(f"compare.sh -n {n} --runs {runs} --peers '{peers}'"
        + (" --redis-default" if redis_default else ""))
    with open(work / "compare.log", "ab") as out:
        subprocess.run(["bash", *cmd], env=env, stdout=out, stderr=subprocess.STDOUT,
                       check=False, timeout=7200)


def burst(work: Path, n: int) -> None:
    """measure.py --burst for ours, on its own private Redis (pub/sub unlimited)."""
    log(f"burst drain, ours, -n {n}")
    port = free_port()
    with redis_server("--client-output-buffer-limit", "pubsub 0 0 0") as srv:
        cmd = [sys.executable, str(HARNESS / "measure.py"), "--label", "ours",
               "--cmd", ours_cmd(port).replace("{broker}", srv.url),
               "--url", f"http://127.0.0.1:{port}/metrics",
               "--done", "celery_task_succeeded_total+celery_task_failed_total",
               "--broker", srv.url, "--redis-port", str(srv.port), "-n", str(n),
               "--burst", "--pubsub-limit", "0 0 0", "--out", str(work / "results.jsonl"),
               "--log", str(work / "logs" / "ours-burst.log"),
               "--flood", str(HARNESS / "flood.py"), "--flood-python", sys.executable,
               "--flood-args", "--procs 2 --pipeline 200"]
        (work / "logs").mkdir(exist_ok=True)
        with open(work / "compare.log", "ab") as out:
            subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False,
                           timeout=1800)


def extra(work: Path, part: str, n: int, cap: int = 100_000, peers: str = "") -> None:
    log(f"{part} -n {n}")
    logfile = str(work / "logs" / f"ours-{part}.log")
    (work / "logs").mkdir(exist_ok=True)
    try:
        if part == "paced":
            import paced
            peer_a = (str(ensure_venv(*PEER_VENVS["A"]) / "bin" / "python")
                      if "A" in peers.split() else None)
            for r in paced.run([500.0, 2000.0], float(n), peer_a, "C" in peers.split(),
                               log=logfile):
                _append(work / "extras.jsonl", r)
            return
        if part == "scrape":
            import scrape
            row = scrape.run(n=n, log=logfile)
        elif part == "unfinished":
            import unfinished
            row = unfinished.run(n=n, cap=cap, log=logfile)
        elif part == "amqp":
            import amqp_path
            row = amqp_path.run(n=n, log=logfile)
            rows = [row, amqp_path.run(n=n, log=logfile, burst=True)]
            for r in rows:
                _append(work / "extras.jsonl", r)
            return
        elif part == "profile":
            import pyspy_stages
            for burst_mode in (False, True):
                name = "burst" if burst_mode else "live"
                _append(work / "extras.jsonl", pyspy_stages.run(
                    n, str(work / f"profile-{name}.folded"), burst=burst_mode))
            return
        elif part == "disconnect":
            import disconnect
            row = disconnect.run(n=n, log=logfile)
        elif part == "stages":
            out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "stages.py"),
                                  "-n", str(n), "--json"], capture_output=True, check=True,
                                 timeout=900)
            row = {"part": "stages", **json.loads(out.stdout.decode().splitlines()[-1])}
        else:
            raise ValueError(part)
    except Exception as exc:  # one part failing must not lose the others' figures
        row = {"part": part, "n": n, "error": f"{type(exc).__name__}: {exc}"[:500]}
        log(f"{part} failed: {row['error']}")
    _append(work / "extras.jsonl", row)


def _append(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


# -- the report ---------------------------------------------------------------------------


def _mode(r: dict) -> str:
    limit = r.get("buffer_limit", "")
    lim = "unlimited" if limit.split()[-3:] == ["0", "0", "0"] else "redis-default"
    return ("burst" if r.get("burst") else "live") + "/" + lim


def _med(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _rng(values: list, fmt: str = "{:,.0f}") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    med = fmt.format(statistics.median(values))
    if len(values) > 1 and min(values) != max(values):
        return f"{med} [{fmt.format(min(values))}-{fmt.format(max(values))}]"
    return med


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.1f}x"


def table(results: list[dict]) -> list[str]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((_mode(r), r["label"]), []).append(r)
    lines = ["| mode | system | N tasks | runs | events/s ingested | CPU µs/event | "
             "lost tasks | scrape ms | RSS after MiB | peak RSS MiB | "
             "CPU vs ours | RSS vs ours | scrape vs ours | alive |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = list(LABELS)
    for mode in sorted({m for m, _ in groups}, key=lambda m: (m != "live/unlimited", m)):
        ours = groups.get((mode, "ours"), [])
        o_cpu = _med([1e6 * r["cpu_s"] / r["events_ingested"] for r in ours
                      if r.get("cpu_s") and r.get("events_ingested")])
        o_rss = _med([r.get("rss_after_mib") for r in ours])
        o_scr = _med([r.get("scrape_ms_final") for r in ours])
        labels = sorted({lbl for m, lbl in groups if m == mode},
                        key=lambda x: order.index(x) if x in order else 99)
        for label in labels:
            rs = groups[(mode, label)]
            cpu = [1e6 * r["cpu_s"] / r["events_ingested"] if r.get("cpu_s")
                   and r.get("events_ingested") else None for r in rs]
            rss = [r.get("rss_after_mib") for r in rs]
            scr = [r.get("scrape_ms_final") for r in rs]
            lines.append("| " + " | ".join([
                mode, LABELS.get(label, label), f"{rs[0]['n']:,}", str(len(rs)),
                _rng([r.get("events_per_s") for r in rs]), _rng(cpu, "{:,.1f}"),
                _rng([r.get("lost") for r in rs]), _rng(scr, "{:,.1f}"), _rng(rss),
                _rng([r.get("max_rss_seen_mib") or r.get("hwm_mib") for r in rs]),
                "1.0x" if label == "ours" else _ratio(_med(cpu), o_cpu),
                # the ceiling is a bare counter, not an exporter: only its CPU compares
                "1.0x" if label == "ours" else "-" if label.startswith("ceiling")
                else _ratio(_med(rss), o_rss),
                "1.0x" if label == "ours" else "-" if label.startswith("ceiling")
                else _ratio(_med(scr), o_scr),
                ",".join("y" if r.get("exporter_alive") else "DEAD" for r in rs),
            ]) + " |")
    return lines


def _ms(value: float | None) -> str:
    return "-" if value in (None, []) else str(value)


def paced_table(extras: list[dict]) -> list[str]:
    rows = [r for r in extras if r.get("part") == "paced" and not r.get("error")]
    if not rows:
        return []
    lines = ["| events/s, one per message | system | CPU µs/event | CPU vs ours | "
             "published ev/s | lost tasks | subscriber dropped | RSS MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for rate in sorted({r["rate"] for r in rows}):
        at = [r for r in rows if r["rate"] == rate]
        ours = _med([r["cpu_us_per_event"] for r in at if r["label"] == "ours"])
        for label in sorted({r["label"] for r in at},
                            key=lambda x: list(LABELS).index(x) if x in LABELS else 99):
            rs = [r for r in at if r["label"] == label]
            cpu = [r["cpu_us_per_event"] for r in rs]
            lines.append("| " + " | ".join([
                f"{rate:,.0f}", LABELS.get(label, label), _rng(cpu, "{:,.1f}"),
                "1.0x" if label == "ours" else _ratio(_med(cpu), ours),
                _rng([r["published_events_per_s"] for r in rs]),
                _rng([r["lost_tasks"] for r in rs]),
                ",".join("yes" if r["subscriber_dropped"] else "no" for r in rs),
                _rng([r["rss_mib"] for r in rs], "{:,.1f}")]) + " |")
    return ["Everyday rates (paced.py: one event per Redis message, evenly paced, Redis' "
            "default pub/sub limits):", "", *lines, ""]


def extras_lines(extras: list[dict]) -> list[str]:
    out = []
    for r in extras:
        part = r.get("part")
        if part == "paced" and not r.get("error"):
            continue  # in its own table
        if r.get("error"):
            out.append(f"- {part}: FAILED ({r['error']})")
        elif part == "scrape":
            formats = "; ".join(
                f"{fmt} median {_ms(f['busy_median'])} ms, p95 {_ms(f['busy_p95'])} ms, max "
                f"{_ms(f['busy_max'])} ms, idle {f['idle_median']} ms"
                + (f" ({f['busy_ratio_to_text']}x text busy, {f['idle_ratio_to_text']}x idle)"
                   if "busy_ratio_to_text" in f else "")
                for fmt, f in ((k, r[k]) for k in ("text", "prometheus-2", "prometheus-3")
                               if k in r))
            out.append(
                f"- scrape at {r['series']:,} series while ingesting "
                f"({r['scrapes_during_ingest']} rounds, one scrape per format each "
                f"{r.get('scrape_interval_s', '-')} s, publisher "
                f"{r['published_events_per_s']:,.0f} ev/s): {formats}; "
                f"{r['metrics_bytes']:,} bytes; lost {r['lost']}; RSS {r['rss_mib']} MiB")
        elif part == "unfinished":
            out.append(
                f"- {r['n']:,} tasks without a terminal event, --max-tasks "
                f"{r['max_tasks']:,}: tracked max {r['tasks_tracked_max']:,} (within cap: "
                f"{r['within_cap']}), evicted {r['evicted_capacity']:,}; RSS "
                f"{r['rss_start_mib']} -> {r['rss_at_cap_mib']} MiB at the cap -> max "
                f"{r['rss_max_mib']} MiB (VmHWM {r['hwm_mib']}); {r['seconds']} s")
        elif part == "amqp":
            out.append(
                f"- {r['label']} (RabbitMQ, kombu path{', burst drain' if r.get('burst') else ''}"
                f"): {r['cpu_us_per_event']} CPU µs/event, {r['events_per_s']:,.0f} ev/s "
                f"ingested, publisher {r['published_events_per_s']:,.0f} ev/s, lost "
                f"{r['lost']}, RSS {r['rss_mib']} MiB")
        elif part == "disconnect":
            out.append(
                f"- disconnect (CLIENT KILL TYPE pubsub during a flat-out flood of "
                f"{r['n']:,} tasks at {r['publisher_events_per_s']:,.0f} ev/s): resubscribed after "
                f"{r['resubscribed_after_s']} s; lost {r['lost_events']} events "
                f"({r['lost_tasks']} terminal); celery_exporter_broker_reconnects_total "
                f"{r['reconnects_total']:.0f}, _broker_connected {r['connected']:.0f}; log: "
                + " / ".join(line.split(" WARNING ", 1)[-1][:110] for line in r["log_lines"]))
        elif part == "profile":
            st = r["stages_percent"]
            mode = "draining a backlog" if r.get("burst") else "live flood, GIL-holding samples"
            out.append(
                f"- py-spy, {mode} ({st['samples']} samples; {r['cpu_us_per_event']} CPU "
                f"µs/event = {r['user_us_per_event']} user + {r['system_us_per_event']} "
                f"system): " + ", ".join(f"{k} {v}%" for k, v in st.items() if k != "samples"))
        elif part == "stages":
            out.append(
                "- Redis fast path stages (offline replay of a recorded flood, CPU µs/event): "
                + ", ".join(f"{k[:-3]} {v}" for k, v in r.items() if k.endswith("_us"))
                + f"; scrape at {r['series']:,} series: render {r['render_ms']} ms "
                f"(prometheus_client's generate_latest {r['render_ms_client']} ms), "
                f"OpenMetrics {r.get('render_om_ms')} ms (prometheus_client's "
                f"{r.get('render_om_ms_client')} ms), pipeline lock held {r['lock_ms']} ms")
    return out


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def report(work: Path, started: dict) -> str:
    results, extras = _rows(work / "results.jsonl"), _rows(work / "extras.jsonl")
    head = [
        f"# celery-events-exporter benchmark, {started['date']}",
        "",
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{started['redis']}. Load average (1/5/15 min) at start {started['load']}, "
        f"at end {load()}. Results: {work}",
        "",
        "CPU µs/event = exporter user+system CPU during the run / task events ingested "
        "(4 per task). Ratios are peer / ours (higher = ours better). Ranges are "
        "median [min-max] over runs.",
        "",
    ]
    text = "\n".join([*head, *table(results), "", *paced_table(extras),
                      *extras_lines(extras), ""])
    (work / "report.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=tuple(SIZES), default="full")
    p.add_argument("-n", type=int, help="tasks per compare run")
    p.add_argument("--runs", type=int)
    p.add_argument("--default-n", type=int, help="tasks for the --redis-default run")
    p.add_argument("--peers", help='harness peers: "A B C" (A prometheus-exporter-celery, '
                                   'B flower, C bare redis-py ceiling), "" for ours only')
    p.add_argument("--parts", help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--out", help="results directory (default benchmarks/results/<time>)")
    a = p.parse_args(argv)
    cfg = dict(SIZES[a.size])
    for key in ("n", "runs", "default_n", "peers", "parts"):
        if getattr(a, key) is not None:
            cfg[key] = getattr(a, key)
    parts = [x for x in cfg["parts"].split(",") if x]
    unknown = set(parts) - set(PARTS)
    if unknown:
        p.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if not (HARNESS / "compare.sh").exists():
        p.error(f"the harness is missing: {HARNESS}/compare.sh")
    work = Path(a.out or REPO / "benchmarks" / "results" / time.strftime("%Y%m%d-%H%M%S"))
    work = work.resolve()
    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True,
                             text=True).stdout.split(" sha=")[0]
    started = {"date": time.strftime("%Y-%m-%d %H:%M"), "load": load(), "redis": redis_v}
    prepare_work(work, cfg["peers"] if {"compare", "default", "paced"} & set(parts) else "")
    for part in parts:
        if part == "compare":
            compare(work, cfg["n"], cfg["runs"], cfg["peers"], False)
        elif part == "default":
            compare(work, cfg["default_n"], 1, cfg["peers"], True)
        elif part == "burst":
            burst(work, cfg["burst_n"])
        else:
            extra(work, part, cfg[f"{part}_n"], cfg["unfinished_cap"], cfg["peers"])
    print(report(work, started))
    return 0


if __name__ == "__main__":
    sys.exit(main())

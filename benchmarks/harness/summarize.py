#!/usr/bin/env python3
# ruff: noqa: E741, SIM115, E501  (a copy of the external harness, kept close enough to diff)
"""Median [min-max] table from results.jsonl (one group per peer/N/mode)."""
import collections
import json
import statistics
import sys


def mode(r):
    lim = " ".join(r["buffer_limit"].split()[-3:]) if "pubsub" in r["buffer_limit"] else "?"
    lim = "unlimited" if lim == "0 0 0" else "redis-default"
    kind = "burst" if r.get("burst") else ("paced" if "--rate" in r["flood_args"] else "live")
    return f"{kind}/{lim}"


def fmt(vals, nd=0):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    med = statistics.median(vals)
    def f(x):
        return (f"{x:,.{nd}f}")
    if len(vals) == 1 or min(vals) == max(vals):
        return f(med)
    return f"{f(med)} [{f(min(vals))}-{f(max(vals))}]"


rows = [json.loads(l) for l in open(sys.argv[1] if len(sys.argv) > 1 else "results.jsonl")]
groups = collections.OrderedDict()
for r in rows:
    groups.setdefault((mode(r), r["label"], r["n"]), []).append(r)
hdr = ["mode", "peer", "N tasks", "runs", "events/s ingested", "steady ev/s", "flood ev/s",
       "ev per CPU-s", "lost tasks", "RSS before->after MiB", "VmHWM MiB", "scrape ms",
       "metrics bytes", "max sub omem MiB", "redis closes", "alive"]
print("| " + " | ".join(hdr) + " |")
print("|" + "---|" * len(hdr))
for (md, label, n), rs in groups.items():
    evcpu = [r["events_ingested"] / r["cpu_s"] if r.get("cpu_s") else None for r in rs]
    print("| " + " | ".join([
        md, label, f"{n:,}", str(len(rs)),
        fmt([r.get("events_per_s") for r in rs]),
        fmt([r.get("steady_events_per_s") for r in rs]),
        fmt([r.get("flood_events_per_s") for r in rs]),
        fmt(evcpu),
        fmt([r.get("lost") for r in rs]),
        f"{fmt([r.get('rss_before_mib') for r in rs])} -> {fmt([r.get('rss_after_mib') for r in rs])}",
        fmt([r.get("hwm_mib") for r in rs]),
        fmt([r.get("scrape_ms_final") for r in rs]),
        fmt([r.get("metrics_bytes") for r in rs]),
        fmt([r.get("sub_max_omem_mib") for r in rs], 1),
        fmt([r.get("redis_buffer_limit_closes") for r in rs]),
        ",".join("y" if r.get("exporter_alive") else "DEAD" for r in rs),
    ]) + " |")

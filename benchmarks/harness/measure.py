#!/usr/bin/env python3
# ruff: noqa: E501, SIM115, E741  (a copy of the external harness, kept close enough to diff)
"""Measure how fast a Celery Prometheus exporter ingests a flood of events.

One run:
  1. (optional) start the exporter with --cmd, wait for /metrics and for its
     PSUBSCRIBE to show up in Redis, let it settle;
  2. baseline: scrape, RSS (VmRSS/VmHWM), CPU ticks, Redis subscriber ids;
  3. run flood.py for N tasks (4 events each) and poll /metrics every
     --poll s, also sampling Redis CLIENT LIST (subscriber output buffer,
     disconnects) and the exporter's RSS;
  4. stop when the --done sum has grown by N, or it has not grown for
     --stall s after the flood finished, or the exporter died, or --max-wait;
  5. RSS/CPU after, 3 final scrapes (latency, bytes), Redis log delta,
     exporter log error lines; stop the exporter (by pid) if we started it.
Appends one JSON line to --out and prints a summary.

Metric expressions: terms joined by '+', each  name  or
name{label=v1|v2,label2=v3}; the sum of every matching sample is taken, e.g.
  'celery_task_succeeded_total+celery_task_failed_total'
  'flower_events_total{type=task-succeeded|task-failed}'
"""
import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request

import redis

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_expr(expr):
    terms = []
    for t in expr.split("+"):
        t = t.strip()
        m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?', t)
        if not m:
            raise SystemExit(f"bad term {t!r}")
        sel = {}
        if m.group(2):
            for part in m.group(2).split(","):
                k, v = part.split("=", 1)
                sel[k.strip()] = set(x.strip().strip('"') for x in v.split("|"))
        terms.append((m.group(1), sel))
    return terms


def sum_expr(text, terms):
    total = 0.0
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = SAMPLE.match(line)
        if not m:
            continue
        name = m.group(1)
        for tname, sel in terms:
            if name != tname:
                continue
            if sel:
                labels = dict(LABEL.findall(m.group(3) or ""))
                if not all(labels.get(k) in vs for k, vs in sel.items()):
                    continue
            with contextlib.suppress(ValueError):
                total += float(m.group(4))
    return total


def scrape(url, timeout=30.0):
    t = time.time()
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body = r.read()
    return body.decode("utf-8", "replace"), time.time() - t, len(body), time.time()


def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0]) // 1024          # MiB
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            out["cpu_s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return out


def subscribers(r):
    """id -> client info for every pattern/channel subscriber in Redis."""
    out = {}
    for c in r.client_list():
        if int(c.get("psub", 0)) or int(c.get("sub", 0)):
            out[c["id"]] = c
    return out


def redis_log_drops(path):
    if not path or not os.path.exists(path):
        return 0
    with open(path, errors="replace") as f:
        return sum("output buffer limits" in line for line in f)


def interp_cross(samples, level):
    """first time the (t, v) series crosses level, linear between polls."""
    prev = None
    for t, v in samples:
        if v >= level:
            if prev is None or v == prev[1]:
                return t
            t0, v0 = prev
            return t0 + (t - t0) * (level - v0) / (v - v0)
        prev = (t, v)
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--done", required=True, help="expr: finished tasks (succeeded+failed)")
    p.add_argument("--all", default="", help="expr: all task events, for events/s")
    p.add_argument("--cmd", default="", help="start the exporter with this command")
    p.add_argument("--pid", type=int, default=0, help="or: pid of a running exporter")
    p.add_argument("--log", default="exporter.log")
    p.add_argument("--settle", type=float, default=3.0)
    p.add_argument("-n", type=int, default=20000)
    p.add_argument("--flood", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "flood.py"))
    p.add_argument("--flood-python", default=sys.executable)
    p.add_argument("--flood-args", default="--procs 2 --pipeline 200",
                   help="extra flood.py args (procs, rate, pipeline, multi)")
    p.add_argument("--broker", default="redis://127.0.0.1:6391/0")
    p.add_argument("--redis-port", type=int, default=6391)
    p.add_argument("--redis-log", default="")
    p.add_argument("--pubsub-limit", default="",
                   help="set CONFIG client-output-buffer-limit pubsub to this "
                        "('0 0 0' = unlimited, '32mb 8mb 60' = Redis default)")
    p.add_argument("--burst", action="store_true",
                   help="SIGSTOP the exporter while flooding, SIGCONT after: "
                        "measures pure drain rate of a backlog held in Redis "
                        "(needs --pubsub-limit '0 0 0' to be loss-free)")
    p.add_argument("--pidfile", default="", help="write the exporter pid here (for py-spy)")
    p.add_argument("--poll", type=float, default=1.0)
    p.add_argument("--stall", type=float, default=10.0)
    p.add_argument("--max-wait", type=float, default=900.0)
    p.add_argument("--out", default="results.jsonl")
    a = p.parse_args()
    if not a.url.startswith(("http://127.0.0.1", "http://localhost")):
        raise SystemExit("refusing non-loopback URL")
    done_t, all_t = parse_expr(a.done), (parse_expr(a.all) if a.all else None)
    r = redis.Redis(host="127.0.0.1", port=a.redis_port, socket_timeout=10)
    if a.pubsub_limit:
        r.config_set("client-output-buffer-limit", f"pubsub {a.pubsub_limit}")
    limit = r.config_get("client-output-buffer-limit")["client-output-buffer-limit"]
    res = {"label": a.label, "n": a.n, "flood_args": a.flood_args, "burst": a.burst,
           "buffer_limit": limit, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    subs_before = set(subscribers(r))
    proc = None
    pid = a.pid
    logf = None
    try:
        if a.cmd:
            logf = open(a.log, "ab")
            logf.write(f"\n=== {res['started']} {a.label} n={a.n}\n".encode())
            logf.flush()
            proc = subprocess.Popen(shlex.split(a.cmd), stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            pid = proc.pid
            if a.pidfile:
                with open(a.pidfile, "w") as f:
                    f.write(str(pid))
        up_deadline = time.time() + 60
        text = None
        while time.time() < up_deadline:
            if proc and proc.poll() is not None:
                raise SystemExit(f"exporter exited rc={proc.returncode}, see {a.log}")
            try:
                text = scrape(a.url, timeout=10)[0]
                if set(subscribers(r)) - subs_before or not a.cmd:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit("exporter did not come up / subscribe within 60 s")
        time.sleep(a.settle)
        my_subs = set(subscribers(r)) - subs_before
        text, lat, size, _ = scrape(a.url)
        base_done = sum_expr(text, done_t)
        base_all = sum_expr(text, all_t) if all_t else 0.0
        st0 = proc_status(pid) if pid else None
        res.update(pid=pid, rss_before_mib=st0 and st0.get("VmRSS"),
                   base_done=base_done, scrape_ms_before=round(lat * 1000, 1),
                   subscriber_ids=sorted(my_subs))
        drops0 = redis_log_drops(a.redis_log)

        target = base_done + a.n
        fcmd = [a.flood_python, a.flood, "--broker", a.broker, "-n", str(a.n),
                *shlex.split(a.flood_args)]
        if a.burst:
            os.kill(pid, signal.SIGSTOP)
        t_start = time.time()
        flood = subprocess.Popen(fcmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 stdin=subprocess.DEVNULL)
        t_cont = None
        if a.burst:
            try:
                flood.wait(timeout=a.max_wait)
            finally:
                t_cont = time.time()
                os.kill(pid, signal.SIGCONT)
            subs = subscribers(r)
            res["burst_backlog_omem_mib"] = round(sum(int(subs[s].get("omem", 0))
                                                      for s in my_subs if s in subs) / 2**20, 1)
        samples, alls, scrape_ms = [], [], []
        max_omem, max_rss, _max_qlen_subs = 0, 0, 0
        disconnects, flood_out, flood_done_at = set(), None, None
        last_val, last_change, fail_since = base_done, time.time(), None
        reason = "max-wait"
        deadline = t_start + a.max_wait
        while time.time() < deadline:
            tick = time.time()
            if flood_out is None and flood.poll() is not None:
                out, err = flood.communicate(timeout=30)
                flood_done_at = time.time()
                try:
                    flood_out = json.loads(out.decode().strip().splitlines()[-1])
                except (ValueError, IndexError):
                    flood_out = {"error": err.decode()[-2000:]}
            try:
                text, lat, size, t_resp = scrape(a.url)
                v = sum_expr(text, done_t)
                samples.append((t_resp, v - base_done))
                if all_t:
                    alls.append((t_resp, sum_expr(text, all_t) - base_all))
                scrape_ms.append(lat * 1000)
                if v > last_val:
                    last_val, last_change = v, t_resp
                fail_since = None
            except OSError as e:              # slow/unresponsive /metrics: not a stall
                fail_since = fail_since or time.time()
                res.setdefault("scrape_errors", []).append(str(e)[:200])
            subs = subscribers(r)
            for sid in my_subs:
                if sid not in subs:
                    disconnects.add(sid)
                else:
                    max_omem = max(max_omem, int(subs[sid].get("omem", 0)))
            new = set(subs) - subs_before - my_subs
            if new:                           # exporter re-subscribed
                res.setdefault("resubscribed_ids", []).extend(sorted(new))
                my_subs |= new
            st = proc_status(pid) if pid else None
            if st:
                max_rss = max(max_rss, st.get("VmRSS", 0))
            if last_val >= target:
                reason = "reached N"
                break
            if (pid and st is None) or (proc and proc.poll() is not None):
                reason = "exporter died"
                break
            if fail_since and time.time() - fail_since > 120:
                reason = "metrics unresponsive 120s"
                break
            if flood_out is not None and not fail_since and time.time() - last_change > a.stall:
                reason = f"stalled {a.stall:.0f}s"
                break
            time.sleep(max(0.0, a.poll - (time.time() - tick)))
        if flood_out is None:
            try:
                out, _ = flood.communicate(timeout=a.max_wait)
                flood_out = json.loads(out.decode().strip().splitlines()[-1])
            except Exception as e:
                flood.kill()
                flood_out = {"error": repr(e)}
        final = last_val - base_done
        t_pub0 = t_cont or flood_out.get("t_first_publish", t_start)
        t_pub1 = flood_out.get("t_last_publish", flood_done_at or t_start)
        t_final = interp_cross(samples, final) if final > 0 else None
        ingest_s = (t_final - t_pub0) if t_final else None
        ev_ingested = (alls[-1][1] if alls else 4 * final)
        t10, t90 = interp_cross(samples, 0.1 * a.n), interp_cross(samples, 0.9 * a.n)
        steady = (0.8 * a.n * 4 / (t90 - t10)) if (t10 and t90 and t90 > t10) else None
        st1 = proc_status(pid) if pid else None
        fin = []
        for _ in range(3):
            try:
                _, lat, size, _ = scrape(a.url)
                fin.append((lat * 1000, size))
            except OSError:
                pass
        fin_lat = sorted(x[0] for x in fin)
        res.update(
            reason=reason, done=final, lost=a.n - final, events_ingested=ev_ingested,
            flood_events=flood_out.get("events"), flood_publish_s=flood_out.get("publish_seconds"),
            flood_events_per_s=flood_out.get("events_per_s"),
            ingest_s=ingest_s and round(ingest_s, 2),
            lag_after_publish_s=(t_final - t_pub1) if t_final else None,
            events_per_s=(ev_ingested / ingest_s) if ingest_s else None,
            steady_events_per_s=steady,
            rss_after_mib=st1 and st1.get("VmRSS"), hwm_mib=st1 and st1.get("VmHWM"),
            max_rss_seen_mib=max_rss,
            cpu_s=(st1["cpu_s"] - st0["cpu_s"]) if (st0 and st1) else None,
            scrape_ms_during_median=sorted(scrape_ms)[len(scrape_ms) // 2] if scrape_ms else None,
            scrape_ms_during_max=max(scrape_ms) if scrape_ms else None,
            polls=len(samples),
            series=[(round(t - t_pub0, 2), int(v)) for t, v in samples],
            scrape_ms_final=fin_lat[len(fin_lat) // 2] if fin_lat else None,
            metrics_bytes=fin[-1][1] if fin else None,
            sub_max_omem_mib=round(max_omem / 2**20, 1),
            sub_disconnected=sorted(disconnects),
            redis_buffer_limit_closes=redis_log_drops(a.redis_log) - drops0,
            exporter_alive=(proc.poll() is None) if proc else (st1 is not None),
        )
        if flood_out.get("error"):
            res["flood_error"] = flood_out["error"]
    finally:
        if proc is not None:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
            res["exporter_rc"] = proc.returncode
        if logf:
            logf.close()
    if a.cmd and os.path.exists(a.log):
        with open(a.log, errors="replace") as f:
            tail = f.read().split(f"=== {res['started']} {a.label}")[-1]
        res["log_error_lines"] = sum(bool(re.search(r"error|exception|traceback", l, re.I))
                                     for l in tail.splitlines())
        res["log_tail"] = tail[-600:]
    with open(a.out, "a") as f:
        f.write(json.dumps(res) + "\n")
    keys = ["label", "n", "reason", "done", "lost", "ingest_s", "events_per_s",
            "steady_events_per_s", "flood_events_per_s", "rss_before_mib", "rss_after_mib",
            "hwm_mib", "cpu_s", "scrape_ms_final", "metrics_bytes", "sub_max_omem_mib",
            "sub_disconnected", "redis_buffer_limit_closes", "exporter_alive"]
    print(json.dumps({k: (round(res[k], 1) if isinstance(res.get(k), float) else res.get(k))
                      for k in keys}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""py-spy profile of our exporter while the harness' flood.py runs, summed per stage.

Starts a private redis-server and our exporter, attaches `py-spy record` (raw folded
stacks, 250 Hz, non-blocking) and runs flood.py (2 publisher processes, as compare.sh
does), then classifies every sample by the line it was executing:

  socket read        RedisConsumer._loop in sock.recv
  hiredis parse      RedisConsumer._loop in Reader.feed / Reader.gets, reply handling
  envelope JSON      decode_envelope: orjson.loads(envelope) and its checks
  base64             decode_envelope: binascii.a2b_base64(body)
  event JSON         decode_envelope: orjson.loads(body)
  state handlers     State.ingest and everything below it
  lock + pipeline    Pipeline.envelopes itself (lock, loop, tick)
  scrape             the HTTP thread (collect + render)
  other              the rest (probes, thread bootstrap, GC...)

py-spy comes from PyPI into the cached tools environment (see run.py's CACHE) unless
PY_SPY points at one.

    .venv/bin/python benchmarks/pyspy_stages.py -n 100000 [--out prof.folded]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import HARNESS, REPO, load, redis_server, scrape, started, sum_metric
from run import CACHE

STAGES = ("socket read", "hiredis parse", "envelope JSON", "base64", "event JSON",
          "state handlers", "lock + pipeline", "scrape", "other")


def py_spy() -> str:
    exe = os.environ.get("PY_SPY")
    if exe:
        return exe
    venv = CACHE / "tools"
    if not (venv / "bin" / "py-spy").exists():
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "py-spy"], check=True)
    return str(venv / "bin" / "py-spy")


def _lines(path: Path, needles: dict[str, str]) -> dict[int, str]:
    """line number -> stage, for the source lines that contain each needle."""
    out = {}
    for number, text in enumerate(path.read_text().splitlines(), 1):
        for needle, stage in needles.items():
            if needle in text:
                out[number] = stage
    return out


def classifier():
    redis_lines = _lines(REPO / "exporter" / "ingest" / "redis.py", {
        "recv_into(buf)": "socket read", "feed(buf": "hiredis parse",
        "gets()": "hiredis parse", "append(reply": "hiredis parse",
        "len(reply)": "hiredis parse"})
    decode_lines = _lines(REPO / "exporter" / "decode.py", {
        "_a2b(body)": "base64", "_events(_loads(body))": "event JSON"})

    def stage(frames: list[str]) -> str:
        text = ";".join(frames)
        if "Handler." in text or "generate_text" in text or "collect (" in text:
            return "scrape"
        if "State." in text:
            return "state handlers"
        leaf = frames[-1]
        if "_events (" in leaf:
            return "event JSON"
        if "decode_envelope" in leaf:
            line = int(leaf.rsplit(":", 1)[1].rstrip(")"))
            return decode_lines.get(line, "envelope JSON")
        if "Pipeline." in leaf:
            return "lock + pipeline"
        if "RedisConsumer._loop" in leaf:
            line = int(leaf.rsplit(":", 1)[1].rstrip(")"))
            return redis_lines.get(line, "hiredis parse")
        return "other"

    return stage


def summarise(folded: str) -> dict:
    stage = classifier()
    counts: collections.Counter[str] = collections.Counter()
    with open(folded) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if stack:
                counts[stage(stack.split(";"))] += int(n)
    total = sum(counts.values()) or 1
    return {s: round(100 * counts[s] / total, 1) for s in STAGES} | {"samples": total}


def run(n: int, out: str, burst: bool = False, rate: int = 250) -> dict:
    """Live: sample only while holding the GIL (time blocked in recv is not CPU).
    Burst: the exporter is stopped while flood.py publishes, then drains the backlog flat
    out and every sample counts (recv always has data, so its time is real work)."""
    res: dict = {"part": "profile", "n": n, "burst": burst, "load_before": load()}
    with redis_server("--client-output-buffer-limit", "pubsub 0 0 0") as srv, \
            started(srv.url) as exp:
        exp.wait_ready()
        spy_cmd = [py_spy(), "record", "-p", str(exp.pid), "-o", out, "-f", "raw",
                   "-r", str(rate), "--nonblocking", *(() if burst else ("--gil",))]
        flood_cmd = [sys.executable, str(HARNESS / "flood.py"), "--broker", srv.url,
                     "-n", str(n), "--procs", "2", "--pipeline", "200"]
        spy = None
        try:
            if burst:
                os.kill(exp.pid, signal.SIGSTOP)
                flood = subprocess.run(flood_cmd, capture_output=True, timeout=900)
                os.kill(exp.pid, signal.SIGCONT)
                time.sleep(0.05)
            st0 = exp.stats() or {}
            t0 = time.monotonic()
            spy = subprocess.Popen(spy_cmd, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            if not burst:
                time.sleep(1.0)
                flood = subprocess.run(flood_cmd, capture_output=True, timeout=900)
            published = json.loads(flood.stdout.decode().strip().splitlines()[-1])
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                text, _ = scrape(exp.url)
                if (sum_metric(text, "celery_task_succeeded_total")
                        + sum_metric(text, "celery_task_failed_total")) >= n:
                    break
                time.sleep(0.1)
            elapsed = time.monotonic() - t0
            st1 = exp.stats() or {}
        finally:
            if exp.proc.poll() is None:
                os.kill(exp.pid, signal.SIGCONT)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                try:
                    spy.wait(60)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait(10)
    events = 4 * n
    cpu = st1.get("cpu_s", 0) - st0.get("cpu_s", 0)
    res.update(publisher_events_per_s=published.get("events_per_s"),
               cpu_us_per_event=round(cpu / events * 1e6, 1),
               user_us_per_event=round((st1.get("user_s", 0) - st0.get("user_s", 0))
                                       / events * 1e6, 1),
               system_us_per_event=round((st1.get("sys_s", 0) - st0.get("sys_s", 0))
                                         / events * 1e6, 1),
               drain_events_per_s=round(events / elapsed) if burst else None,
               stages_percent=summarise(out), load_after=load())
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=100_000)
    p.add_argument("--out", default="exporter-profile.folded")
    p.add_argument("--burst", action="store_true", help="profile the drain of a backlog")
    p.add_argument("--summarise", metavar="FOLDED", help="only summarise an existing profile")
    a = p.parse_args(argv)
    if a.summarise:
        print(json.dumps(summarise(a.summarise)))
        return 0
    print(json.dumps(run(a.n, a.out, a.burst)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

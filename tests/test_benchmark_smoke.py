"""The benchmark still runs: ours only, through the harness in benchmarks/, at a tiny size.

Speed is reported, never asserted here: the machine is shared and the figures are noisy.
What must hold is that the run completes, loses nothing, and prints our row with numbers.
The full comparison (peers from PyPI, 100k tasks) is `benchmarks/run.py` without --size;
see docs/performance.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"^[\d,]+(\.\d+)?( \[[\d.,]+-[\d.,]+\])?$")

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def test_tiny_benchmark_run_reports_our_row(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    env = {k: v for k, v in os.environ.items() if k != "CEE_BENCH_HARNESS"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--size", "tiny", "--out",
         str(out)], capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = proc.stdout
    rows = [line for line in report.splitlines()
            if line.startswith("| live/unlimited | celery-events-exporter (ours) |")]
    assert len(rows) == 1, report
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    (_mode, _label, n, runs, events_per_s, cpu_us, lost, scrape_ms, rss, peak,
     *_ratios, alive) = cells
    assert n == "2,000" and runs == "1"
    for value in (events_per_s, cpu_us, scrape_ms, rss, peak):
        assert NUMBER.match(value), (value, rows[0])
    assert lost == "0", rows[0]
    assert alive == "y", rows[0]
    # The extra parts ran too: paced rates, scrape under ingest, the in-flight cap.
    for rate in ("500", "2,000"):
        row = re.search(rf"^\| {rate} \| celery-events-exporter \(ours\) \| ([\d.,]+) \| 1.0x "
                        r"\| [\d.,]+ \| 0 \| no \|", report, re.M)
        assert row, report
    # (a tiny run never reaches 10k series: only the idle figures are there)
    assert re.search(r"^- scrape at [\d,]+ series while ingesting .* text median .* idle "
                     r"[\d.]+ ms.* prometheus-2 median .* idle [\d.]+ ms.* prometheus-3 "
                     r"median .* idle [\d.]+ ms.* lost 0;", report, re.M), report
    assert re.search(r"^- 20,000 tasks without a terminal event, --max-tasks 5,000: .*"
                     r"within cap: True\), evicted 15,000", report,
                     re.M), report
    assert "FAILED" not in report
    assert (out / "results.jsonl").exists() and (out / "report.md").exists()

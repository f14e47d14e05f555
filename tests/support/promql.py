"""Evaluate a PromQL expression on made-up series with promtool (Prometheus' own engine)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import yaml


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found on PATH: install Prometheus' promtool "
                    "(Debian/Ubuntu: apt-get install prometheus)")
    return path


def check_expr(workdir: Path, expr: str, series: Mapping[str, str], at: str,
               samples: Sequence[tuple[str, float]], interval: str = "1m") -> None:
    """Fail unless `expr` evaluated at `at` gives exactly `samples` (label text, value).

    `series` maps a series (`name{labels}`) to promtool's expanding notation ("0+1x10").
    """
    (workdir / "empty.yml").write_text("groups: []\n", encoding="utf-8")
    case = {
        "rule_files": ["empty.yml"],
        "evaluation_interval": interval,
        "tests": [{
            "interval": interval,
            "input_series": [{"series": s, "values": v} for s, v in series.items()],
            "promql_expr_test": [{
                "expr": expr, "eval_time": at,
                "exp_samples": [{"labels": labels, "value": value} for labels, value in samples],
            }],
        }],
    }
    (workdir / "case.yml").write_text(yaml.safe_dump(case), encoding="utf-8")
    proc = subprocess.run([promtool(), "test", "rules", "case.yml"], capture_output=True,
                          text=True, timeout=60, check=False, cwd=workdir)
    assert proc.returncode == 0, f"{expr}\n{proc.stdout}{proc.stderr}"

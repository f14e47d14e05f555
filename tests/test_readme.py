"""The README's generated tables and commands must match the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _generated(what: str) -> str:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CELERY_") and k != "DJANGO_SETTINGS_MODULE"}
    return subprocess.run([sys.executable, "-m", "celery_events_exporter.docs", what],
                          capture_output=True,
                          text=True, check=True, env=env, cwd=ROOT, timeout=60).stdout


def _section(text: str, marker: str) -> str:
    match = re.search(rf"<!-- {marker}:start -->\n(.*?)<!-- {marker}:end -->", text, re.S)
    assert match, f"README lacks the {marker} markers"
    return match.group(1)


def update() -> None:
    text = README.read_text()
    for marker, what in (("metrics-table", "metrics"), ("flags-table", "flags")):
        text = re.sub(rf"(<!-- {marker}:start -->\n).*?(<!-- {marker}:end -->)",
                      lambda mt, w=what: mt.group(1) + _generated(w) + mt.group(2), text,
                      flags=re.S)
    README.write_text(text)


def test_metric_and_flag_tables_are_current() -> None:
    if os.environ.get("UPDATE_README"):
        update()
    text = README.read_text()
    hint = "regenerate with UPDATE_README=1 pytest tests/test_readme.py"
    assert _section(text, "metrics-table") == _generated("metrics"), hint
    assert _section(text, "flags-table") == _generated("flags"), hint


def test_quick_start_names_the_test_command_ci_runs() -> None:
    text = README.read_text()
    assert "scripts/test " in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^exec scripts/test$", ci, re.M), "CI must run exactly the README command"


def test_linked_files_exist() -> None:
    for target in re.findall(r"\]\(([^)#:]+)\)", README.read_text()):
        assert (ROOT / target).exists(), f"README links to missing {target}"

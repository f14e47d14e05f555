from __future__ import annotations

import shutil
import subprocess

import pytest


@pytest.fixture(scope="session")
def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:  # fail, not skip: the exposition check is part of the contract
        pytest.fail("promtool is not installed (apt-get install prometheus)")
    return exe


def promtool_check(exe: str, text: str | bytes) -> str:
    """`promtool check metrics` on an exposition; fails the test on any problem."""
    data = text.encode() if isinstance(text, str) else text
    r = subprocess.run([exe, "check", "metrics"], input=data, capture_output=True, timeout=60)
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert r.returncode == 0, f"promtool check metrics failed ({r.returncode}):\n{out[:4000]}"
    return out

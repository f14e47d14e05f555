"""`python -m scripts.stack` (what scripts/demo runs) as a subprocess for the e2e tests:
started in a private workdir, its URLs read from what it prints, stopped with Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
START_SECONDS = 120


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


class Demo:
    def __init__(self, proc: subprocess.Popen, urls: dict[str, str], output: list[str]) -> None:
        self.proc, self.urls, self.output = proc, urls, output
        self.started = time.monotonic()  # when its services answered

    def query(self, expr: str) -> list:
        body = get_json(f"{self.urls['prometheus']}/api/v1/query?"
                        + urllib.parse.urlencode({"query": expr}))
        assert isinstance(body, dict) and body["status"] == "success", body
        return body["data"]["result"]

    def alerts(self) -> list[dict]:
        """Prometheus' alerts (pending and firing)."""
        return get_json(f"{self.urls['prometheus']}/api/v1/alerts")["data"]["alerts"]

    def alertmanager_alerts(self) -> list[dict]:
        """The alerts Alertmanager holds, as its API v2 lists them."""
        body = get_json(f"{self.urls['alertmanager']}/api/v2/alerts")
        assert isinstance(body, list), body
        return body


@contextlib.contextmanager
def running_demo(args: list[str], workdir: Path) -> Iterator[Demo]:
    """The demo stack with `args`, until the block ends (Ctrl-C, then a kill if need be)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.stack", "--workdir", str(workdir), *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(iter(proc.stdout.readline, "")),
                     daemon=True).start()
    urls: dict[str, str] = {}
    deadline = time.monotonic() + START_SECONDS
    try:
        while time.monotonic() < deadline and "alertmanager" not in urls:
            assert proc.poll() is None, "demo exited early:\n" + "".join(output)
            for line in list(output):
                m = re.match(r"\s+(exporter|prometheus|alertmanager|django web)\s+(http\S+)", line)
                if m:
                    urls[m.group(1)] = re.sub(r"/(metrics|alerts|signup/)$", "", m.group(2))
            time.sleep(0.2)
        assert {"exporter", "prometheus", "alertmanager"} <= set(urls), "".join(output)
        yield Demo(proc, urls, output)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def wait_for(what: str, check: Callable[[], object], demo: Demo, timeout: float) -> object:
    """Poll `check` every 2 s until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        assert demo.proc.poll() is None, "demo died:\n" + "".join(demo.output[-40:])
        last = check()
        if last:
            return last
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}\n"
                         + "".join(demo.output[-20:]))

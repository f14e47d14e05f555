"""Packaging: the pins cover every requirement, and the built wheel works on its own.

The wheel is built from a copy of what the Dockerfile copies, without build isolation (the
.venv has the pinned setuptools), and installed with --no-index from .venv/wheelhouse, which
scripts/env.sh fills with the runtime dependencies: the test itself needs no package index.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.servers import free_port, stop_proc, wait_for_port

ROOT = Path(__file__).resolve().parent.parent


def pins() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            out[canonicalize_name(name)] = version
    return out


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return [r for r in reqs if canonicalize_name(r.name) != canonicalize_name(project["name"])]


def test_every_requirement_is_pinned_within_its_range() -> None:
    pinned = pins()
    for req in requirements():
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pinned[name]}, outside {req}")
        for extra in req.extras:  # psycopg[binary] -> psycopg-binary
            assert canonicalize_name(f"{req.name}-{extra}") in pinned, (req, extra)


# --- the built wheel, installed without extras into a clean venv ---------------------------

# The import names the wheel installs; the package rename turns these into one.
TOP_LEVEL = {"celery_events_exporter"}
# `python -m <this>` is the console script.
MAIN_MODULE = "celery_events_exporter"
SOURCES = ("pyproject.toml", "README.md", "exporter", "dashboards", "alerts")
WHEELHOUSE = ROOT / ".venv" / "wheelhouse"
# Modules of the extras and of the demo: none of them may be in the plain install.
NOT_RUNTIME = ("django", "grafanalib", "attr", "matplotlib", "psycopg")


@dataclass
class Built:
    wheel: Path
    log: str


@dataclass
class Venv:
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def script(self) -> Path:
        return self.root / "bin" / "celery-events-exporter"

    def site_packages(self) -> Path:
        code = "import sysconfig; print(sysconfig.get_path('purelib'))"
        out = subprocess.run([self.python, "-c", code], capture_output=True, text=True,
                             check=True)
        return Path(out.stdout.strip())

    def run(self, *argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CELERY_EVENTS_EXPORTER_", "DJANGO_", "PYTHON"))}
        # From a directory without the repo's packages, so only the installed ones import.
        return subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                              timeout=120, cwd=cwd or self.root, env=env)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, src / name)
    dist = tmp_path_factory.mktemp("dist")
    out = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                          "--outdir", str(dist), str(src)],
                         capture_output=True, text=True, timeout=300)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log
    (wheel,) = dist.glob("*.whl")
    return Built(wheel, log)


@pytest.fixture(scope="module")
def venv(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    if not any(WHEELHOUSE.glob("*.whl")):
        pytest.fail(f"{WHEELHOUSE} is empty: run `source scripts/env.sh && ensure_venv` "
                    f"(scripts/test does) after removing .venv/.installed-*")
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=120)
    env = Venv(root)
    out = env.run(env.python, "-m", "pip", "install", "-q", "--no-index", "--find-links",
                  WHEELHOUSE, built.wheel)
    assert out.returncode == 0, out.stdout + out.stderr
    return env


def test_the_build_has_no_deprecation_warnings(built: Built) -> None:
    lines = [line for line in built.log.splitlines()
             if "deprecat" in line.lower() or "SetuptoolsWarning" in line]
    assert not lines, "\n".join(lines)


def test_wheel_metadata_license_classifiers_and_typed(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as whl:
        (meta_name,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        meta = whl.read(meta_name).decode()
        names = whl.namelist()
    assert "License-Expression: Apache-2.0" in meta
    assert "Classifier: Typing :: Typed" in meta
    assert "Classifier: Framework :: Celery" in meta
    for package in TOP_LEVEL:
        assert f"{package}/py.typed" in names, package


def test_wheel_installs_only_its_own_top_level_names(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as whl:
        tops = {name.split("/", 1)[0] for name in whl.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == TOP_LEVEL


def test_wheel_ships_every_module_of_the_repository(built: Built) -> None:
    """The package list in pyproject is explicit (the import name is mapped onto three
    folders): a new subpackage left out of it would import in the repo and not installed."""
    folders = {"exporter": "celery_events_exporter",
               "dashboards": "celery_events_exporter/dashboards",
               "alerts": "celery_events_exporter/alerts"}
    expected = set()
    for folder, target in folders.items():
        for path in (ROOT / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                expected.add(f"{target}/{path.relative_to(ROOT / folder).as_posix()}")
    with zipfile.ZipFile(built.wheel) as whl:
        shipped = {n for n in whl.namelist() if n.endswith(".py")}
    assert expected <= shipped, sorted(expected - shipped)


def test_wheel_ships_the_dashboards_and_rules(venv: Venv) -> None:
    from celery_events_exporter.alerts.rules import RULES_FILE

    site = venv.site_packages()
    shipped = {p.name: p.read_bytes() for p in site.rglob("*.json") if p.parent.name == "json"
               and p.parent.parent.name in ("dashboards", *TOP_LEVEL)}
    repo = {p.name: p.read_bytes() for p in (ROOT / "dashboards" / "json").glob("*.json")}
    assert shipped == repo
    (rules,) = [p for p in site.rglob(RULES_FILE) if "site-packages" in p.parts]
    assert rules.read_bytes() == (ROOT / "alerts" / RULES_FILE).read_bytes()


def test_plain_install_has_no_extras(venv: Venv) -> None:
    for module in NOT_RUNTIME:
        out = venv.run(venv.python, "-c", f"import {module}")
        assert out.returncode != 0, f"{module} is importable from a plain install"


def test_console_script_and_python_m_agree(venv: Venv) -> None:
    from celery_events_exporter import __version__

    by_script = venv.run(venv.script, "--version")
    by_module = venv.run(venv.python, "-m", MAIN_MODULE, "--version")
    assert by_script.returncode == 0, by_script.stderr
    assert by_module.returncode == 0, by_module.stderr
    assert by_script.stdout.split() == by_module.stdout.split()
    assert by_script.stdout.split()[-1] == __version__


def test_rules_subcommand_works_from_the_plain_wheel(venv: Venv, tmp_path: Path) -> None:
    from celery_events_exporter.alerts.rules import RULES_FILE

    out = venv.run(venv.script, "rules", "--out", tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / RULES_FILE).read_bytes() == (ROOT / "alerts" / RULES_FILE).read_bytes()


def test_dashboards_subcommand_names_its_extra(venv: Venv, tmp_path: Path) -> None:
    out = venv.run(venv.script, "dashboards", "--out", tmp_path)
    assert out.returncode == 2
    assert "celery-events-exporter[dashboards]" in out.stderr
    assert "Traceback" not in out.stderr
    assert not list(tmp_path.iterdir())


# A database of the session's Redis that no other test publishes events to.
EVENTS_DB = 7


@pytest.fixture()
def plain_exporter(venv: Venv, redis_url: str) -> Iterator[int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_EVENTS_EXPORTER_",
                                                                     "DJANGO_", "PYTHON"))}
    url = redis_url.rsplit("/", 1)[0] + f"/{EVENTS_DB}"
    proc = subprocess.Popen([str(venv.script), "--broker-url", url, "--host", "127.0.0.1",
                             "--port", str(port), "--probe-interval", "0", "--no-inspect"],
                            cwd=venv.root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, 30, proc)
        yield port
    finally:
        stop_proc(proc)


def _readyz(base: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


@pytest.mark.redis
def test_exporter_runs_from_the_plain_wheel(plain_exporter: int, redis_url: str) -> None:
    """Connects, consumes a worker's heartbeat from the real broker, turns ready, serves."""
    import redis

    from tests.support.events import envelope, publish

    base = f"http://127.0.0.1:{plain_exporter}"
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + f"/{EVENTS_DB}")
    status, body = 0, ""
    for _ in range(150):  # bounded: about 30 s
        heartbeat = {"type": "worker-heartbeat", "hostname": "plain@wheel", "freq": 2.0,
                     "timestamp": time.time(), "active": 0, "processed": 0,
                     "loadavg": [0, 0, 0], "sw_ident": "py-celery", "sw_ver": "5.7.0",
                     "sw_sys": "Linux"}
        publish(client, [envelope(heartbeat)], db=EVENTS_DB)
        status, body = _readyz(base)
        if status == 200:
            break
        time.sleep(0.2)
    client.close()
    assert status == 200, body
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert "celery_exporter_build_info" in text
    assert 'worker="plain@wheel"' in text


@pytest.mark.redis
def test_check_subcommand_works_from_the_plain_wheel(venv: Venv, redis_url: str) -> None:
    out = venv.run(venv.script, "check", "--broker-url", redis_url, "--seconds", "1",
                   "--no-inspect")
    # No worker runs on this broker: check reaches it, says so and exits 1 (one problem).
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert f"Broker: {redis_url}" in out.stdout
    assert "no worker heartbeats" in out.stdout


@pytest.mark.redis
def test_plain_wheel_reads_the_demo_beat_schedule_without_django(venv: Venv,
                                                                 redis_url: str) -> None:
    """--beat-schedule proj.settings from the plain install (no Django): the demo's own
    settings module, whose package __init__ would start the Celery app and Django."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_EVENTS_EXPORTER_",
                                                                     "DJANGO_", "PYTHON"))}
    url = redis_url.rsplit("/", 1)[0] + f"/{EVENTS_DB}"
    proc = subprocess.Popen([str(venv.script), "--broker-url", url, "--host", "127.0.0.1",
                             "--port", str(port), "--probe-interval", "1", "--no-inspect",
                             "--beat-schedule", "proj.settings"],
                            cwd=ROOT / "proj", env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    text = ""
    try:
        wait_for_port(port, 30, proc)
        for _ in range(100):  # bounded: about 20 s (the first probe run is at start)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            if "celery_periodic_task_next_run_timestamp_seconds{" in text:
                break
            time.sleep(0.2)
    finally:
        stop_proc(proc)
    for entry in ("resend-welcome-emails", "cleanup-results", "signup-report"):
        assert f'celery_periodic_task_overdue{{entry="{entry}"' in text, (entry, text[-2000:])
    assert 'celery_exporter_probe_success{probe="beat"} 1.0' in text


def test_plain_wheel_names_the_driver_a_database_flag_needs(venv: Venv) -> None:
    out = venv.run(venv.script, "--broker-url", "redis://127.0.0.1:1/0",
                   "--beat-database-url", "postgresql://beat@db.invalid/app")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "--beat-database-url" in out.stderr and "psycopg" in out.stderr
    assert "Traceback" not in out.stderr

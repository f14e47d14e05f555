"""docker-compose.yml, the Dockerfile and deploy/ checked without a Docker engine.

CI has no Docker, so nothing here builds or starts a container. Instead:

1. docker-compose.yml (after variable interpolation with its defaults) is validated against
   the Compose specification's JSON schema.
2. Everything the compose file, the Dockerfile and the configs in deploy/ refer to is
   checked against the repo: bind-mounted paths, build contexts and targets, dependencies
   and healthchecks, published ports, the exporter's flags and environment, the Django
   settings' environment variables, the workers' queues, celery and manage.py options, the
   Prometheus config (promtool), the Alertmanager config (amtool), Grafana provisioning and
   the dashboards' datasource, .dockerignore against the Dockerfile's COPYs, and the
   DEMO_SIGNING switch: the `certs` service's key pair reaches every app service, and the
   exporter stops `inspect` when signing is on.
3. The compose stack and scripts/stack.py (its local-process twin) agree: Prometheus job
   `celery`, worker queues and prefetch, the exporter's queues and probe timers.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROJ = ROOT / "proj"
SETTINGS_SOURCES = (PROJ / "proj" / "settings.py", PROJ / "proj" / "envconfig.py")
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
GRAFANA_PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
RULES = ROOT / "alerts" / "celery-rules.yml"
DASHBOARDS = ROOT / "dashboards" / "json"

# The Compose specification's JSON schema, as shipped inside docker-compose 1.29.2 (the last
# Python release, May 2021; Apache-2.0) at compose/config/compose_spec.json, wheel sha256
# 8d5589373b35c8d3b1c8c1182c6e4a4ff14bffa3dd0b605fcd08f73c94cef809. Committed under
# tests/data so the suite never downloads at run time. It is the 2021 spec: keys added since
# (top-level `name`, `depends_on.*.required`/`restart`, `healthcheck.start_interval`,
# `ports[].host_ip`, `develop`, ...) are missing from it, so docker-compose.yml must not
# use them.
SCHEMA_FILE = Path(__file__).parent / "data" / "compose_spec.json"
SCHEMA_SHA256 = "0dc04bd346dcfee1b1419628fff79937bbf076925f298f272a2b490e2b112bac"

APP_ENV_PREFIXES = ("CELERY_", "DJANGO_", "POSTGRES_", "DEMO_")
EXPORTER_ENV_PREFIX = "CELERY_EVENTS_EXPORTER_"
GO_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
LOCAL_HTTP = re.compile(r"http://(?:127\.0\.0\.1|localhost):(\d+)/")


def _fail_missing_tool(tool: str, package: str) -> None:
    pytest.fail(f"{tool} is not installed: apt-get install {package} (scripts/test does it)")


# --- Compose variable interpolation ------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<invalid>))")


def interpolate(value: Any, used: dict[str, str | None],
                env: Mapping[str, str] | None = None) -> Any:
    """Compose's `${VAR:-default}` interpolation with every variable at its default.

    The environment of whoever runs the tests is ignored on purpose: the file must work as
    it is. `env` sets variables for the tests that switch one (DEMO_SIGNING). `used`
    collects each variable and its default (None when it has none).
    """
    env = env or {}
    if isinstance(value, dict):
        return {k: interpolate(v, used, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, used, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("named")
        if name is None:
            raise ValueError(f"invalid interpolation in {value!r}")
        op, default = match.group("op"), match.group("arg")
        has_default = op in ("-", ":-")
        used.setdefault(name, default if has_default else None)
        # `:-` also replaces an empty value, `-` only an unset one.
        if name in env and (env[name] or op != ":-"):
            return env[name]
        return default if has_default else ""

    return _VARIABLE.sub(substitute, value)


@dataclass
class Compose:
    raw: dict[str, Any]
    data: dict[str, Any]
    variables: dict[str, str | None]

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        return self.data["services"]

    def command(self, name: str) -> list[str]:
        command = self.services[name].get("command", [])
        return shlex.split(command) if isinstance(command, str) else list(command)

    def environment(self, name: str) -> dict[str, str]:
        env = self.services[name].get("environment", {})
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        return {k: "" if v is None else str(v) for k, v in env.items()}

    def target(self, name: str) -> str | None:
        build = self.services[name].get("build")
        return build.get("target") if isinstance(build, dict) else None

    def services_with_target(self, target: str) -> list[str]:
        return [name for name in self.services if self.target(name) == target]

    def mounts(self, name: str) -> list[Mount]:
        out = []
        for volume in self.services[name].get("volumes", []):
            if isinstance(volume, dict):
                out.append(Mount(volume.get("source", ""), volume["target"],
                                 bool(volume.get("read_only")), volume["type"] == "bind"))
                continue
            parts = volume.split(":")
            source, target = parts[0], parts[1]
            mode = parts[2] if len(parts) > 2 else "rw"
            out.append(Mount(source, target, "ro" in mode.split(","),
                             source.startswith((".", "/", "~"))))
        return out

    def host_path(self, name: str, container_path: str) -> Path | None:
        """The repo file behind `container_path` in service `name`, through its bind mounts."""
        path = PurePosixPath(container_path)
        for mount in self.mounts(name):
            if not mount.bind:
                continue
            target = PurePosixPath(mount.target)
            if path == target or target in path.parents:
                return (ROOT / mount.source / path.relative_to(target)).resolve()
        return None

    def ports(self, name: str) -> list[Port]:
        out = []
        for spec in self.services[name].get("ports", []):
            assert isinstance(spec, str), f"{name}: use the short port syntax (ip:host:container)"
            spec, _, protocol = spec.partition("/")
            parts = spec.split(":")
            ip = parts[0] if len(parts) == 3 else ""
            host = parts[-2] if len(parts) >= 2 else ""
            out.append(Port(ip, host, parts[-1], protocol or "tcp"))
        return out


@dataclass
class Mount:
    source: str
    target: str
    read_only: bool
    bind: bool


@dataclass
class Port:
    ip: str
    host: str
    container: str
    protocol: str


def load_compose(env: Mapping[str, str] | None = None) -> Compose:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    used: dict[str, str | None] = {}
    data = interpolate(raw, used, env)
    return Compose(raw, data, used)


@pytest.fixture(scope="module")
def compose() -> Compose:
    return load_compose()


# --- the Compose schema ------------------------------------------------------------------------

def fetch_compose_schema() -> dict[str, Any]:
    """The committed schema, checked against the digest of the file as it was extracted."""
    data = SCHEMA_FILE.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    assert digest == SCHEMA_SHA256, f"{SCHEMA_FILE} was changed: sha256 {digest}"
    return json.loads(data)


def test_compose_file_matches_the_compose_specification(compose: Compose) -> None:
    schema = fetch_compose_schema()
    # Its $schema is draft 2019-09, written as a URI jsonschema does not recognise.
    assert "2019-09" in schema["$schema"]
    jsonschema.Draft201909Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft201909Validator(schema).iter_errors(compose.data),
                    key=lambda e: list(map(str, e.absolute_path)))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


def test_every_variable_has_a_default_and_no_secret_is_literal(compose: Compose) -> None:
    undefaulted = sorted(name for name, default in compose.variables.items() if default is None)
    assert not undefaulted, f"variables without a ${{VAR:-default}}: {undefaulted}"
    secret = re.compile(r"PASSWORD|PASS$|SECRET|TOKEN|_KEY$")
    for name, service in compose.raw["services"].items():
        env = service.get("environment", {})
        for key, value in (env.items() if isinstance(env, dict) else []):
            if secret.search(key):
                assert isinstance(value, str) and re.fullmatch(r"\$\{\w+:-[^}]*\}", value), (
                    f"{name}: {key} must come from the environment (${{{key}:-demo}}), not "
                    f"be written into the file")


def test_images_are_pinned_and_builds_exist(compose: Compose) -> None:
    stages = dockerfile_stages()
    for name, service in compose.services.items():
        build = service.get("build")
        if build is None:
            image = service["image"]
            repository, _, tag = image.rpartition(":")
            assert repository and "/" not in tag, f"{name}: {image} has no tag"
            assert re.match(r"^v?\d+(\.\d+)?", tag), (
                f"{name}: {image} must be pinned to a major/minor version, not {tag!r}")
            continue
        assert isinstance(build, dict), f"{name}: give build a context, dockerfile and target"
        context = (ROOT / build["context"]).resolve()
        assert context == ROOT, f"{name}: build context {context} is not the repo"
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile == DOCKERFILE, f"{name}: {dockerfile} is not the repo's Dockerfile"
        assert build.get("target") in stages, f"{name}: no stage {build.get('target')!r}"
        assert service.get("image", "").endswith(":local"), (
            f"{name}: name the locally built image (image: ...:local)")


def test_bind_mounts_exist_and_named_volumes_are_declared(compose: Compose) -> None:
    declared = set(compose.data.get("volumes") or {})
    used = set()
    for name in compose.services:
        for mount in compose.mounts(name):
            if mount.bind:
                path = ROOT / mount.source
                assert path.exists(), f"{name}: bind mount source {mount.source} is missing"
                assert mount.read_only, f"{name}: mount {mount.source} read-only (:ro)"
            else:
                assert mount.source in declared, f"{name}: volume {mount.source} undeclared"
                used.add(mount.source)
    assert declared == used, f"declared but unused volumes: {sorted(declared - used)}"


def _one_shot(compose: Compose) -> set[str]:
    return {target for service in compose.services.values()
            for target, spec in (service.get("depends_on") or {}).items()
            if isinstance(spec, dict) and spec["condition"] == "service_completed_successfully"}


def test_dependencies_exist_and_are_healthy_or_completed(compose: Compose) -> None:
    services = compose.services
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert not services[target].get("profiles") or service.get("profiles"), (
                f"{name} depends on {target}, which only runs with a profile")
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck"
            if spec["condition"] == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} must run once"
                assert not services[target].get("ports"), f"{target} is one-shot: no ports"

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"dependency cycle: {' -> '.join((*path, name))}"
        for target in services[name].get("depends_on") or {}:
            visit(target, (*path, name))

    for name in services:
        visit(name, ())


def test_long_running_services_have_healthchecks_and_restart_policies(compose: Compose) -> None:
    one_shot = _one_shot(compose)
    assert one_shot == {"certs", "migrate"}
    for name, service in compose.services.items():
        assert "restart" in service, f"{name}: no restart policy"
        if name in one_shot:
            continue
        assert service["restart"] in ("unless-stopped", "always", "on-failure"), name
        if compose.target(name) == "app":
            assert service.get("init") is True, f"{name}: init: true (SIGTERM as PID 1)"
        check = service.get("healthcheck")
        assert check and not check.get("disable") and check.get("test"), (
            f"{name}: long-running services need a healthcheck")
        assert check["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: healthcheck test form"
        for key in ("interval", "timeout", "start_period"):
            if key in check:
                assert GO_DURATION.match(check[key]), f"{name}: healthcheck {key} {check[key]}"
        # An HTTP healthcheck probes the port the service is published on.
        published = {p.container for p in compose.ports(name)}
        for port in LOCAL_HTTP.findall(" ".join(check["test"])):
            assert not published or port in published, (
                f"{name}: healthcheck probes :{port}, the service publishes {published}")


def test_ports_are_published_on_localhost_only_and_unique(compose: Compose) -> None:
    seen: dict[str, str] = {}
    for name in compose.services:
        for port in compose.ports(name):
            assert port.ip == "127.0.0.1", f"{name}: publish on 127.0.0.1 only, not {port}"
            assert port.host.isdigit() and port.container.isdigit(), f"{name}: {port}"
            key = f"{port.host}/{port.protocol}"
            assert key not in seen, f"{name} and {seen.get(key)} both publish {key}"
            seen[key] = name
    expected = {"grafana": "3000", "prometheus": "9090", "alertmanager": "9093",
                "exporter": "9540", "web": "8000"}
    for name, port in expected.items():
        assert [p.host for p in compose.ports(name)] == [port], f"{name} on 127.0.0.1:{port}"


# --- the exporter ------------------------------------------------------------------------------

@contextlib.contextmanager
def exporter_environment(env: dict[str, str]) -> Iterator[None]:
    """The process environment the exporter's parser sees, as in the container."""
    saved = dict(os.environ)
    for key in list(os.environ):
        if key.startswith(EXPORTER_ENV_PREFIX) or key in ("DJANGO_SETTINGS_MODULE",
                                                          "CELERY_BROKER_URL"):
            del os.environ[key]
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def exporter_config(compose: Compose) -> Any:
    from celery_events_exporter.cli import build_parser, config_from_args

    # The exporter imports --beat-schedule's module from its working directory, a bind mount.
    workdir = compose.services["exporter"].get("working_dir")
    here = compose.host_path("exporter", workdir) if workdir else ROOT
    assert here is not None and here.is_dir(), f"exporter working_dir {workdir}: not mounted"
    with exporter_environment(compose.environment("exporter")), contextlib.chdir(here):
        return config_from_args(build_parser().parse_args(compose.command("exporter")))


def test_exporter_flags_and_environment_exist(compose: Compose) -> None:
    from celery_events_exporter.cli import build_parser

    parser = build_parser()
    flags = {option for action in parser._actions for option in action.option_strings}
    for token in compose.command("exporter"):
        if token.startswith("-"):
            assert token.split("=", 1)[0] in flags, f"exporter has no flag {token}"
    for key in compose.environment("exporter"):
        assert key.startswith(EXPORTER_ENV_PREFIX), f"exporter: {key} is not its variable"
        flag = "--" + key.removeprefix(EXPORTER_ENV_PREFIX).lower().replace("_", "-")
        assert flag in flags, f"exporter: {key} names no flag ({flag})"
    assert "--broker-url" not in compose.command("exporter"), (
        "pass the broker URL as CELERY_EVENTS_EXPORTER_BROKER_URL (keeps it out of `ps`)")


def test_exporter_configuration_is_valid_and_consistent(compose: Compose) -> None:
    config = exporter_config(compose)
    assert [p.container for p in compose.ports("exporter")] == [str(config.port)]
    assert config.broker_url == compose.environment("web")["CELERY_BROKER_URL"]
    assert set(config.queues) == set(task_queues()), "exporter --queue: the project's queues"
    depends = compose.services["exporter"]["depends_on"]
    assert _broker_service(config.broker_url) in depends


def _broker_service(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname or ""


# --- the Django app: settings, queues, commands --------------------------------------------------

def run_in_proj(code: str, env: dict[str, str], argv: list[str] | None = None) -> str:
    """Run Python in proj/ with exactly the given project environment (as in the image)."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(APP_ENV_PREFIXES) and k not in ("DATABASE_URL", "DEMO_SIGNING")}
    argv = argv or ["-c", code]
    result = subprocess.run([sys.executable, *argv], cwd=PROJ, capture_output=True,
                            text=True, timeout=120, check=False,
                            env={**base, "PYTHONPATH": str(PROJ), **env})
    assert result.returncode == 0, result.stderr
    return result.stdout


_QUEUES: list[str] = []


def task_queues() -> list[str]:
    if not _QUEUES:
        _QUEUES.extend(json.loads(run_in_proj(
            "import json; from proj import settings; "
            "print(json.dumps([q.name for q in settings.CELERY_TASK_QUEUES]))", {})))
    return _QUEUES


def test_app_environment_is_read_by_the_settings(compose: Compose) -> None:
    sources = "\n".join(path.read_text() for path in SETTINGS_SOURCES)
    app_services = compose.services_with_target("app")
    assert set(app_services) == {"certs", "migrate", "web", "worker", "worker-reports", "load",
                                 "beat"}
    for name in app_services:
        env = compose.environment(name)
        for key in env:
            if key.startswith(APP_ENV_PREFIXES) or key == "DATABASE_URL":
                assert f'"{key}"' in sources, (
                    f"{name}: {key} is set but proj/proj/settings.py never reads it")
            else:
                pytest.fail(f"{name}: {key} is not a project setting")


def test_app_settings_resolve_to_the_compose_services(compose: Compose) -> None:
    postgres = compose.environment("postgres")
    code = ("import json; from proj import settings as s; print(json.dumps({"
            "'db': s.DATABASES['default'], 'broker': s.CELERY_BROKER_URL, "
            "'prefetch': s.CELERY_WORKER_PREFETCH_MULTIPLIER, 'hosts': s.ALLOWED_HOSTS, "
            "'signing': s.DEMO_SIGNING, 'certs': str(s.DEMO_CERTS_DIR)}))")
    one_shot = _one_shot(compose)
    for name in compose.services_with_target("app"):
        loaded = json.loads(run_in_proj(code, compose.environment(name)))
        db = loaded["db"]
        assert db["ENGINE"] == "django.db.backends.postgresql", f"{name}: {db['ENGINE']}"
        assert db["HOST"] in compose.services and db["HOST"] == "postgres"
        assert (db["NAME"], db["USER"], db["PASSWORD"]) == (
            postgres["POSTGRES_DB"], postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"])
        assert _broker_service(loaded["broker"]) == "redis"
        assert "redis" in compose.services[name].get("depends_on", {}) or name in one_shot
        expected = 4 if name == "worker-reports" else 1
        assert loaded["prefetch"] == expected, f"{name}: prefetch multiplier"
        assert "web" in loaded["hosts"] and "127.0.0.1" in loaded["hosts"]
        assert loaded["signing"] is False, f"{name}: DEMO_SIGNING is off by default"
        assert loaded["certs"] in {m.target for m in compose.mounts(name)}, (
            f"{name}: DEMO_CERTS_DIR {loaded['certs']} is not mounted")


def _celery_commands() -> dict[str, Any]:
    from celery.bin.celery import celery

    return {"": celery, **celery.commands}


def _options(command: Any) -> dict[str, Any]:
    return {opt: param for param in command.params
            for opt in (*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ()))
            if opt.startswith("-")}


def check_celery_argv(argv: list[str], where: str) -> tuple[str, dict[str, str]]:
    """Check `celery [global options] SUBCOMMAND [options]`; returns it and its options."""
    commands = _celery_commands()
    argv = [a for a in argv if not a.startswith((">", "2>"))]
    assert argv[0] == "celery", where
    values: dict[str, str] = {}
    i, command, sub = 1, commands[""], ""
    while i < len(argv):
        token = argv[i]
        if not token.startswith("-"):
            if sub:
                i += 1
                continue
            assert token in commands, f"{where}: celery has no command {token}"
            sub, command = token, commands[token]
            i += 1
            continue
        option = _options(command).get(token.split("=", 1)[0])
        assert option is not None, f"{where}: `celery {sub}` has no option {token}"
        if getattr(option, "is_flag", False) or "=" in token:
            i += 1
        else:
            values[token] = argv[i + 1]
            i += 2
    return sub, values


def test_celery_commands_use_real_options_and_queues(compose: Compose) -> None:
    queues = set(task_queues())
    consumed: set[str] = set()
    nodes = []
    beats: list[str] = []
    for name in compose.services_with_target("app"):
        command = compose.command(name)
        if command[:1] == ["celery"]:
            sub, values = check_celery_argv(command, name)
            assert values["-A"] == "proj"
            if sub == "beat":
                beats.append(name)
                continue
            assert sub == "worker"
            worker_queues = values["-Q"].split(",")
            assert set(worker_queues) <= queues, f"{name}: -Q {worker_queues} vs {queues}"
            consumed.update(worker_queues)
            assert "-E" in command, f"{name}: workers must send task events (-E)"
            nodes.append(values["-n"].replace("%h", compose.services[name]["hostname"]))
            # The healthcheck pings this very worker.
            check = compose.services[name]["healthcheck"]["test"]
            ping = shlex.split(check[1]) if check[0] == "CMD-SHELL" else check[1:]
            sub, ping_values = check_celery_argv(ping, f"{name} healthcheck")
            assert sub == "inspect" and "ping" in ping
            destination = ping_values["-d"].replace("${HOSTNAME}",
                                                    compose.services[name]["hostname"])
            assert destination == nodes[-1], f"{name}: healthcheck pings {destination}"
    assert consumed == queues, f"queues no worker consumes: {queues - consumed}"
    assert len(nodes) == len(set(nodes)) == 2, f"worker node names: {nodes}"
    assert beats == ["beat"], "exactly one celery beat (two would send every task twice)"


def test_beat_runs_the_schedule_the_exporter_reads(compose: Compose,
                                                   stack_spawns: dict[str, Any]) -> None:
    """Beat publishes the project's CELERY_BEAT_SCHEDULE; the exporter reads that very dict
    (without Django), in compose and in scripts/stack.py alike; beat's healthcheck watches
    the schedule file it writes."""
    schedule = json.loads(run_in_proj(
        "import json; from proj import settings; print(json.dumps({k: v['task'] for k, v "
        "in settings.CELERY_BEAT_SCHEDULE.items()}))", {}))
    tasks = json.loads(run_in_proj(
        "import json, django; django.setup(); from proj.celery import app; "
        "app.loader.import_default_modules(); print(json.dumps(sorted(app.tasks)))",
        {"DJANGO_SETTINGS_MODULE": "proj.settings"}))
    assert schedule and set(schedule.values()) <= set(tasks), "every entry runs a real task"
    config = exporter_config(compose)
    (source,) = config.beat_sources
    assert {e.name: e.task for e in source.entries} == schedule
    assert not source.skipped
    for argv in (compose.command("exporter"), stack_spawns["exporter"]["argv"]):
        assert _flag_value_pair(argv, "--beat-schedule") == "proj.settings"
    sub, values = check_celery_argv(compose.command("beat"), "beat")
    assert sub == "beat"
    check = " ".join(compose.services["beat"]["healthcheck"]["test"])
    assert values["-s"].startswith("/tmp/") and f"'{values['-s']}*'" in check
    theirs = stack_spawns["beat"]["argv"]
    assert theirs[theirs.index("-A") + 1:theirs.index("beat") + 1] == ["proj", "beat"]


def _manage_py_command_file(command: str) -> Path | None:
    custom = list(PROJ.glob(f"*/management/commands/{command}.py"))
    if custom:
        return custom[0]
    spec = importlib.util.find_spec("django")
    assert spec and spec.submodule_search_locations
    django = Path(next(iter(spec.submodule_search_locations)))
    builtin = [*django.glob(f"core/management/commands/{command}.py"),
               *django.glob(f"contrib/*/management/commands/{command}.py")]
    return builtin[0] if builtin else None


def test_manage_py_commands_and_options_exist(compose: Compose) -> None:
    checked = 0
    for name in compose.services_with_target("app"):
        command = compose.command(name)
        if command[:2] != ["python", "manage.py"]:
            continue
        assert (PROJ / "manage.py").exists()
        assert _manage_py_command_file(command[2]), f"{name}: no manage.py {command[2]}"
        env = {**compose.environment(name), "DJANGO_DB_ENGINE": "",
               "DJANGO_SQLITE_PATH": str(Path(tempfile.gettempdir()) / "cee-compose.sqlite3")}
        help_text = run_in_proj("", env, ["manage.py", command[2], "--help"])
        for token in command[3:]:
            if token.startswith("--"):
                assert token.split("=", 1)[0] in help_text, f"{name}: {command[2]} {token}?"
        checked += 1
    assert checked == 4  # certs (democerts), migrate, web (runserver), load (loadgen)


def test_web_listens_where_it_is_published(compose: Compose) -> None:
    command = compose.command("web")
    address = command[command.index("runserver") + 1]
    host, port = address.rsplit(":", 1)
    assert host == "0.0.0.0", "runserver must listen on all interfaces in the container"
    assert [p.container for p in compose.ports("web")] == [port]
    assert "/healthz" in " ".join(compose.services["web"]["healthcheck"]["test"])
    assert re.search(r"path\(\s*[\"']healthz[\"']", (PROJ / "proj" / "urls.py").read_text())


# --- DEMO_SIGNING: the certs service, its volume, the exporter ----------------------------------

SIGNING_ON = {"DEMO_SIGNING": "1"}


def _certs_mount(compose: Compose) -> Mount:
    """Where the one-shot `certs` service writes the key pair: its --dir, a named volume."""
    command = compose.command("certs")
    assert command[:3] == ["python", "manage.py", "democerts"], f"certs: {command}"
    assert "--keep" in command, "certs: --keep, or each `up` replaces the key under the workers"
    directory = _flag_value_pair(command, "--dir")
    mounts = [m for m in compose.mounts("certs") if m.target == directory]
    assert len(mounts) == 1, f"certs: nothing mounted at its --dir {directory}"
    assert not mounts[0].bind and not mounts[0].read_only, (
        f"certs: {directory} must be a writable named volume the other services share")
    return mounts[0]


def _waits_for_completion(compose: Compose, name: str, target: str) -> bool:
    """`name` starts only after `target` completed successfully, directly or through others."""
    for dependency, spec in (compose.services[name].get("depends_on") or {}).items():
        if dependency == target:
            if spec["condition"] == "service_completed_successfully":
                return True
        elif _waits_for_completion(compose, dependency, target):
            return True
    return False


def test_every_app_service_reads_the_key_pair_from_the_certs_volume(compose: Compose) -> None:
    volume = _certs_mount(compose)
    assert compose.variables["DEMO_SIGNING"] == "0", "signing is off unless asked for"
    signing_on = load_compose(SIGNING_ON)
    readers = []
    for name in compose.services:
        env = compose.environment(name)
        if "DEMO_CERTS_DIR" not in env:
            assert "DEMO_SIGNING" not in env, f"{name}: DEMO_SIGNING without DEMO_CERTS_DIR"
            continue
        readers.append(name)
        directory = env["DEMO_CERTS_DIR"]
        mounts = [m for m in compose.mounts(name) if m.target == directory]
        assert [(m.source, m.bind) for m in mounts] == [(volume.source, False)], (
            f"{name}: mount the {volume.source} volume at DEMO_CERTS_DIR ({directory})")
        signing = signing_on.environment(name).get("DEMO_SIGNING")
        if name == "certs":
            assert signing == "0", "certs: democerts must run with signing off"
            continue
        assert signing == "1", f"{name}: DEMO_SIGNING must follow the environment"
        assert mounts[0].read_only, f"{name}: only certs writes the key pair (:ro)"
        assert _waits_for_completion(compose, name, "certs"), (
            f"{name} may start before certs has written the key pair")
    assert sorted(readers) == sorted(compose.services_with_target("app"))


def _envconfig() -> types.ModuleType:
    """proj/proj/envconfig.py on its own (it imports no Django; the package would)."""
    spec = importlib.util.spec_from_file_location("_cee_envconfig", PROJ / "proj" / "envconfig.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("value", ["", "0", "1", "true", "TRUE", "yes", "on", "no", "off",
                                   "false"])
def test_exporter_inspect_is_off_exactly_when_the_workers_sign(value: str) -> None:
    # The settings parse DEMO_SIGNING with env_flag; the exporter its variables with _env_bool.
    settings = (PROJ / "proj" / "settings.py").read_text()
    assert 'DEMO_SIGNING = env_flag(ENV, "DEMO_SIGNING")' in settings
    env_flag = _envconfig().env_flag
    stack = load_compose({"DEMO_SIGNING": value})
    signing = {env_flag(stack.environment(name), "DEMO_SIGNING")
               for name in stack.services_with_target("app") if name != "certs"}
    assert len(signing) == 1, f"DEMO_SIGNING={value!r}: the app services disagree"
    assert exporter_config(stack).inspect is not signing.pop(), (
        f"DEMO_SIGNING={value!r}: signing workers refuse the exporter's inspect broadcast")


def test_certs_service_makes_the_key_pair_the_signing_services_load(
        compose: Compose, tmp_path: Path) -> None:
    """The certs command as compose runs it (its environment, the volume as a directory),
    twice as two `up`s would; then each app service's Celery app with signing on."""
    mount = _certs_mount(compose)
    signing_on = load_compose(SIGNING_ON)
    volume = tmp_path / mount.source

    def local(value: str) -> str:
        return str(volume) if value == mount.target else value

    def run(name: str, code: str, argv: list[str] | None = None) -> str:
        env = {key: local(value) for key, value in signing_on.environment(name).items()}
        return run_in_proj(code, env, argv)

    command = [local(token) for token in signing_on.command("certs")]
    assert command[0] == "python"
    run("certs", "", command[1:])
    key = (volume / "worker.key").read_bytes()
    assert "kept" in run("certs", "", command[1:])
    assert (volume / "worker.key").read_bytes() == key, "a second `up` replaced the key"

    code = "from proj.celery import app; print(app.conf.task_serializer, app.conf.security_key)"
    for name in signing_on.services_with_target("app"):
        if name != "certs":
            assert run(name, code).split() == ["auth", str(volume / "worker.key")], name


def _owned_paths(run: str) -> dict[str, str]:
    """Paths a RUN makes or hands over (`install -d -o USER`, `chown USER`), and their owner."""
    owned: dict[str, str] = {}
    for command in re.split(r"&&|\|\||;", run):
        tokens = shlex.split(command)
        if tokens[:1] == ["install"] and "-d" in tokens and "-o" in tokens:
            values = {i + 1 for i, token in enumerate(tokens) if token in ("-o", "-g", "-m")}
            owner = tokens[tokens.index("-o") + 1]
            paths = [t for i, t in enumerate(tokens) if i and i not in values
                     and not t.startswith("-")]
        elif tokens[:1] == ["chown"]:
            arguments = [t for t in tokens[1:] if not t.startswith("-")]
            owner, paths = arguments[0].split(":")[0], arguments[1:]
        else:
            continue
        owned.update(dict.fromkeys(paths, owner))
    return owned


def test_app_image_owns_its_named_volume_mount_points(compose: Compose) -> None:
    # A fresh named volume takes the owner of the image's directory at the mount point: a
    # directory the image lacks comes out root's, and the non-root processes cannot write it.
    stages = dockerfile_stages()
    instructions = [i for stage in reversed(_stage_chain(stages, "app"))
                    for i in stage.instructions]
    users = [index for index, (keyword, _) in enumerate(instructions) if keyword == "USER"]
    user = instructions[users[-1]][1].split(":")[0]
    owned: dict[str, str] = {}
    for keyword, args in instructions[:users[-1]]:  # as root, before the final USER
        if keyword == "RUN":
            owned.update(_owned_paths(args))
    targets = {m.target for name in compose.services_with_target("app")
               for m in compose.mounts(name) if not m.bind}
    assert targets, "no named volumes in the app services"
    for target in sorted(targets):
        assert owned.get(target) == user, (
            f"Dockerfile app stage: create {target} owned by {user} before `USER {user}`")


# --- Prometheus, Alertmanager, Grafana ---------------------------------------------------------

def _flag_value(command: list[str], flag: str, default: str | None = None) -> str | None:
    for token in command:
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
    return default


def _listen_port(compose: Compose, name: str, default: str) -> str:
    address = _flag_value(compose.command(name), "--web.listen-address", f":{default}")
    assert address is not None
    return address.rsplit(":", 1)[1]


def prometheus_config(compose: Compose) -> dict[str, Any]:
    path = _flag_value(compose.command("prometheus"), "--config.file")
    assert path, "prometheus: --config.file"
    assert compose.host_path("prometheus", path) == PROMETHEUS_CONFIG.resolve()
    return yaml.safe_load(PROMETHEUS_CONFIG.read_text())


def test_prometheus_config_passes_promtool(compose: Compose, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        _fail_missing_tool("promtool", "prometheus")
    config = prometheus_config(compose)
    # The rule files' container paths, mapped back to the repo through the bind mounts.
    rule_files = []
    for container_path in config["rule_files"]:
        host = compose.host_path("prometheus", container_path)
        assert host is not None, f"prometheus: nothing mounted at {container_path}"
        assert host.exists(), host
        rule_files.append(str(host))
    assert rule_files == [str(RULES.resolve())]
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump({**config, "rule_files": rule_files}))
    result = subprocess.run([promtool, "check", "config", str(checked)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _targets(config: dict[str, Any], job: str) -> list[str]:
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    return [t for sc in jobs[job]["static_configs"] for t in sc["targets"]]


def test_prometheus_targets_are_compose_services(compose: Compose) -> None:
    config = prometheus_config(compose)
    exporter = exporter_config(compose)
    assert _targets(config, "celery") == [f"exporter:{exporter.port}"]
    alertmanagers = [t for am in config["alerting"]["alertmanagers"]
                     for sc in am["static_configs"] for t in sc["targets"]]
    assert alertmanagers == [f"alertmanager:{_listen_port(compose, 'alertmanager', '9093')}"]
    for job in config["scrape_configs"]:
        for target in _targets(config, job["job_name"]):
            host = target.rsplit(":", 1)[0]
            assert host == "localhost" or host in compose.services, f"{job}: {target}"
    assert [p.container for p in compose.ports("prometheus")] == [
        _listen_port(compose, "prometheus", "9090")]
    # The shipped rules and the dashboards select the exporter's series with job="celery".
    assert 'job="celery"' in RULES.read_text()


def _alert_names() -> set[str]:
    rules = yaml.safe_load(RULES.read_text())
    return {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}


def test_alertmanager_config_passes_amtool(compose: Compose) -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        _fail_missing_tool("amtool", "prometheus-alertmanager")
    path = _flag_value(compose.command("alertmanager"), "--config.file")
    assert path and compose.host_path("alertmanager", path) == ALERTMANAGER_CONFIG.resolve()
    result = subprocess.run([amtool, "check-config", str(ALERTMANAGER_CONFIG)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # Inhibition rules name alerts that exist.
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    names = _alert_names()
    for rule in config.get("inhibit_rules", []):
        for matcher in (*rule.get("source_matchers", []), *rule.get("target_matchers", [])):
            match = re.fullmatch(r'alertname(=~|=)"([^"]+)"', matcher)
            assert match, f"inhibit rule matcher {matcher!r}"
            for alert in match.group(2).split("|"):
                assert alert in names, f"inhibit rule names unknown alert {alert}"


def _yaml_files(directory: Path) -> list[Path]:
    files = sorted([*directory.glob("*.yml"), *directory.glob("*.yaml")])
    assert files, f"no provisioning files in {directory}"
    return files


def _dashboard_datasource_default() -> set[str]:
    defaults = set()
    for path in sorted(DASHBOARDS.glob("*.json")):
        variables = json.loads(path.read_text())["templating"]["list"]
        (variable,) = [v for v in variables if v["type"] == "datasource"]
        assert variable["query"] == "prometheus", path.name
        defaults.add(variable["current"]["value"])
        defaults.add(variable["current"]["text"])
    return defaults


def test_grafana_provisioning(compose: Compose) -> None:
    for kind in ("datasources", "dashboards"):
        assert compose.host_path("grafana", f"/etc/grafana/provisioning/{kind}") == (
            GRAFANA_PROVISIONING / kind).resolve()

    datasources = []
    for path in _yaml_files(GRAFANA_PROVISIONING / "datasources"):
        document = yaml.safe_load(path.read_text())
        assert document["apiVersion"] == 1, path
        for source in document["datasources"]:
            assert {"name", "uid", "type", "access", "url"} <= set(source), (path, source)
            datasources.append(source)
    (prometheus,) = [s for s in datasources if s["type"] == "prometheus"]
    assert prometheus.get("isDefault") is True
    assert sum(bool(s.get("isDefault")) for s in datasources) == 1
    assert prometheus["url"] == f"http://prometheus:{_listen_port(compose, 'prometheus', '9090')}"
    # The dashboards' datasource variable defaults to this datasource (by name or uid).
    defaults = _dashboard_datasource_default()
    assert defaults <= {prometheus["name"], prometheus["uid"]}, defaults
    scrape_interval = prometheus_config(compose)["global"]["scrape_interval"]
    assert prometheus["jsonData"]["timeInterval"] == scrape_interval
    # Exemplars (task ids on latency buckets) are stored and link to the task in Flower.
    assert "--enable-feature=exemplar-storage" in compose.command("prometheus")
    (link,) = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert "127.0.0.1:5555:5555" in compose.services["flower"]["ports"]  # the default port
    assert link["name"] == "task_id"
    # $$: a literal $ through Grafana's provisioning expansion; the browser opens the link.
    assert link["url"] == "http://127.0.0.1:5555/task/$${__value.raw}"
    alertmanager = [s for s in datasources if s["type"] == "alertmanager"]
    for source in alertmanager:
        assert source["url"] == (
            f"http://alertmanager:{_listen_port(compose, 'alertmanager', '9093')}")

    providers = []
    for path in _yaml_files(GRAFANA_PROVISIONING / "dashboards"):
        document = yaml.safe_load(path.read_text())
        assert document["apiVersion"] == 1, path
        providers.extend(document["providers"])
    assert providers
    for provider in providers:
        assert {"name", "type", "options"} <= set(provider), provider
        assert provider["type"] == "file"
        host = compose.host_path("grafana", provider["options"]["path"])
        assert host == DASHBOARDS.resolve(), f"provider path {provider['options']['path']}"
        assert sorted(host.glob("*.json")), host

    home = compose.environment("grafana").get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        path = compose.host_path("grafana", home)
        assert path is not None and path.is_file(), home


def test_grafana_admin_and_datasource_ports(compose: Compose) -> None:
    env = compose.environment("grafana")
    assert env["GF_SECURITY_ADMIN_USER"] == "admin"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "admin"
    assert [p.container for p in compose.ports("grafana")] == ["3000"]


# --- the Dockerfile and .dockerignore ------------------------------------------------------------

@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    out, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def dockerfile_stages() -> dict[str, Stage]:
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, rest in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword == "ARG" and current is None:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest, re.I)
            assert match, f"name every stage: FROM {rest}"
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], match.group(1))
            current = Stage(base, match.group(2))
            stages[current.name] = current
        else:
            assert current is not None, f"{keyword} before FROM"
            current.instructions.append((keyword, rest))
    return stages


def _stage_chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    chain = [stages[name]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), args
    return value


def test_dockerfile_targets_users_and_entrypoints() -> None:
    stages = dockerfile_stages()
    assert {"exporter", "app"} <= set(stages)
    assert list(stages)[-1] == "exporter", "the exporter is the default (last) stage"
    roots = {_stage_chain(stages, name)[-1].base for name in stages}
    assert roots == {"python:3.11-slim"}, roots
    for target in ("exporter", "app"):
        chain = _stage_chain(stages, target)
        users = [u for stage in reversed(chain) for u in stage.all("USER")]
        assert users and users[-1].split(":")[0] not in ("root", "0"), f"{target}: USER"
    exporter = stages["exporter"]
    (entrypoint,) = exporter.all("ENTRYPOINT")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert _exec_form(entrypoint) == ["celery-events-exporter"]
    assert "celery-events-exporter" in scripts
    from celery_events_exporter.config import DEFAULT_PORT

    assert exporter.all("EXPOSE") == [str(DEFAULT_PORT)]
    (healthcheck,) = exporter.all("HEALTHCHECK")
    assert "urllib.request" in healthcheck and "/healthz" in healthcheck
    assert _exec_form(healthcheck.split(" CMD ", 1)[1])[:2] == ["python", "-c"]
    assert f"'{DEFAULT_PORT}'" in healthcheck
    # The exporter image carries no extras; the app image the demo extra.
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for stage in stages.values():
        for run in stage.all("RUN"):
            for extra in re.findall(r"\.whl\)?\[([\w,-]+)\]", run):
                assert set(extra.split(",")) <= set(extras), f"{stage.name}: extra {extra}"
    venv_of = {name: _copied_from(stages[name], "/opt/venv") for name in ("exporter", "app")}
    assert not re.search(r"\[", " ".join(stages[venv_of["exporter"]].all("RUN")))
    assert "[demo]" in " ".join(stages[venv_of["app"]].all("RUN"))


def _copied_from(stage: Stage, path: str) -> str:
    for args in stage.all("COPY"):
        match = re.match(r"--from=(\S+)\s+(\S+)\s+(\S+)$", args)
        if match and match.group(2) == path:
            return match.group(1)
    raise AssertionError(f"{stage.name} copies no {path}")


def _copies(stage: Stage) -> list[tuple[str | None, list[str], str]]:
    out = []
    for args in stage.all("COPY"):
        tokens = shlex.split(args)
        source_stage = None
        while tokens[0].startswith("--"):
            if tokens[0].startswith("--from="):
                source_stage = tokens[0].split("=", 1)[1]
            tokens.pop(0)
        out.append((source_stage, tokens[:-1], tokens[-1]))
    return out


def test_dockerfile_copies_exist_and_survive_dockerignore() -> None:
    stages = dockerfile_stages()
    ignore = DockerIgnore.load()
    names = list(stages)
    for index, stage in enumerate(stages.values()):
        for source_stage, sources, _ in _copies(stage):
            if source_stage is not None:
                assert source_stage in names[:index], f"{stage.name}: COPY --from={source_stage}"
                continue
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"{stage.name}: COPY {source} is missing"
                files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
                kept = [p for p in files if not ignore.ignored(p.relative_to(ROOT).as_posix())]
                assert kept, f"{stage.name}: .dockerignore drops all of COPY {source}"
    # The app runs manage.py from its WORKDIR: the file is copied there.
    app = stages["app"]
    (workdir,) = app.all("WORKDIR")
    command = _exec_form(app.all("CMD")[-1])
    script = PurePosixPath(workdir) / command[1]
    copied = {dest.rstrip("/"): sources for _, sources, dest in _copies(app)}
    sources = copied[str(script.parent)]
    assert any((ROOT / s / script.name).is_file() for s in sources), script


def test_dockerignore_keeps_local_state_out() -> None:
    ignore = DockerIgnore.load()
    for path in (".git/HEAD", ".venv/bin/python", ".demo/demo.sqlite3", "tests/test_state.py",
                 "proj/db.sqlite3", "proj/demo-certs/worker.key", "benchmarks/stages.py",
                 "exporter/__pycache__/cli.cpython-311.pyc", ".env"):
        assert ignore.ignored(path), f".dockerignore lets {path} into the build context"
    for path in ("pyproject.toml", "README.md", "exporter/cli.py", "alerts/rules.py",
                 "dashboards/generate.py", "proj/manage.py", "proj/proj/settings.py",
                 "proj/tasks/migrations/0001_initial.py"):
        assert not ignore.ignored(path), f".dockerignore drops {path}"


@dataclass
class DockerIgnore:
    """Docker's .dockerignore rules: last match wins, a pattern also matches parent dirs."""

    patterns: list[tuple[re.Pattern[str], bool]]

    @classmethod
    def load(cls, path: Path = DOCKERIGNORE) -> DockerIgnore:
        patterns = []
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            patterns.append((re.compile(cls._regex(pattern)), negate))
        return cls(patterns)

    @staticmethod
    def _regex(pattern: str) -> str:
        out, i = "", 0
        while i < len(pattern):
            char = pattern[i]
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif char == "*":
                out, i = out + "[^/]*", i + 1
            elif char == "?":
                out, i = out + "[^/]", i + 1
            elif char == "[":
                end = pattern.index("]", i)
                out, i = out + pattern[i:end + 1], end + 1
            else:
                out, i = out + re.escape(char), i + 1
        return out

    def ignored(self, path: str) -> bool:
        parts = path.split("/")
        candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        result = False
        for regex, negate in self.patterns:
            if any(regex.fullmatch(c) for c in candidates):
                result = not negate
        return result


# --- Flower (profile `flower`) ------------------------------------------------------------------

FLOWER_AUTH = {"FLOWER_USER": "ops", "FLOWER_PASSWORD": "s3cret-from-env"}


def test_flower_is_opt_in_and_pinned_to_the_tested_version(compose: Compose) -> None:
    from importlib.metadata import version

    service = compose.services["flower"]
    assert service["profiles"] == ["flower"], "Flower runs only with --profile flower"
    assert not any("flower" in (s.get("depends_on") or {}) for s in compose.services.values())
    repository, _, tag = service["image"].rpartition(":")
    # The image's tag is Flower's version: the one the demo extra installs and the test
    # below runs.
    assert repository == "mher/flower"
    assert tag == version("flower"), f"image {tag}, constraints.txt pins {version('flower')}"
    assert [p.container for p in compose.ports("flower")] == \
        [compose.environment("flower")["FLOWER_PORT"]]


def test_flower_basic_auth_and_broker_come_from_the_environment(compose: Compose) -> None:
    raw = compose.raw["services"]["flower"]["environment"]
    assert "${FLOWER_PASSWORD:-" in raw["FLOWER_BASIC_AUTH"]
    env = load_compose(FLOWER_AUTH).environment("flower")
    assert env["FLOWER_BASIC_AUTH"] == "ops:s3cret-from-env"
    assert env["CELERY_BROKER_URL"] == compose.environment("exporter")[
        "CELERY_EVENTS_EXPORTER_BROKER_URL"]
    # Nothing secret on the command line (the image's CMD, `celery flower`, is kept).
    assert "command" not in compose.services["flower"]


@pytest.mark.redis
def test_flower_with_the_compose_environment_guards_everything_but_its_healthcheck(
        redis_url: str, tmp_path: Path) -> None:
    """The pinned Flower, configured only by the service's environment, behind basic auth."""
    import requests

    from tests.support.servers import free_port, stop_proc, wait_for_port

    service = load_compose(FLOWER_AUTH).services["flower"]
    env = {k: str(v) for k, v in service["environment"].items()}
    port = free_port()
    # Only what a container has differently: the broker's address and a free local port.
    env.update(CELERY_BROKER_URL=redis_url, FLOWER_PORT=str(port), FLOWER_ADDRESS="127.0.0.1")
    health = LOCAL_HTTP.sub(f"http://127.0.0.1:{port}/", service["healthcheck"]["test"][-1])
    health_url = re.search(r"'(http://[^']+)'", health).group(1)  # type: ignore[union-attr]
    proc = subprocess.Popen([str(Path(sys.executable).with_name("celery")), "flower"],
                            env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
                                 **env},
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, 60, proc)
        base = f"http://127.0.0.1:{port}"
        assert requests.get(health_url, timeout=10).status_code == 200
        assert requests.get(f"{base}/tasks", timeout=10).status_code == 401
        assert requests.get(f"{base}/tasks", timeout=10,
                            auth=("ops", "wrong")).status_code == 401
        assert requests.get(f"{base}/tasks", timeout=10,
                            auth=("ops", "s3cret-from-env")).status_code == 200
    finally:
        stop_proc(proc)


# --- the twin: scripts/stack.py ----------------------------------------------------------------

@pytest.fixture(scope="module")
def stack_spawns(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What scripts/stack.py would start, without starting anything."""
    from scripts import stack

    workdir = tmp_path_factory.mktemp("stack")
    spawned: dict[str, Any] = {}
    rules = workdir / "rules"
    rules.mkdir()
    shutil.copy(RULES, rules / RULES.name)

    def spawn(self: Any, name: str, argv: list[str], env: dict[str, str] | None = None,
              cwd: Path = ROOT) -> Any:
        spawned[name] = {"argv": argv, "env": env or {}}
        proc = types.SimpleNamespace(pid=0, poll=lambda: None, returncode=None)
        service = stack.Service(name, proc, workdir / f"{name}.log")  # type: ignore[arg-type]
        self.services.append(service)
        return service

    patches = [(stack.Stack, "_spawn", spawn), (stack.Stack, "write_rules", lambda self: rules),
               (stack, "wait_http", lambda *a, **k: None),
               (stack, "find", lambda *names: f"/usr/bin/{names[0]}")]
    with pytest.MonkeyPatch.context() as mp:
        for owner, attribute, value in patches:
            mp.setattr(owner, attribute, value)
        instance = stack.Stack(stack.StackOptions(workdir=workdir))
        instance.broker_url = "redis://127.0.0.1:6379/0"
        instance.start_workers()
        instance.start_exporter()
        instance.start_alertmanager()
        instance.start_prometheus()
    spawned["prometheus.yml"] = json.loads((workdir / "prometheus" / "prometheus.yml").read_text())
    return spawned


def test_stack_and_compose_prometheus_agree_on_the_celery_job(
        compose: Compose, stack_spawns: dict[str, Any]) -> None:
    ours = prometheus_config(compose)
    theirs = stack_spawns["prometheus.yml"]
    our_jobs = {job["job_name"] for job in ours["scrape_configs"]}
    their_jobs = {job["job_name"] for job in theirs["scrape_configs"]}
    assert "celery" in our_jobs & their_jobs
    # In both, the `celery` job scrapes the exporter and nothing else.
    exporter_port = exporter_config(compose).port
    assert _targets(ours, "celery") == [f"exporter:{exporter_port}"]
    their_port = _flag_value_pair(stack_spawns["exporter"]["argv"], "--port")
    assert _targets(theirs, "celery") == [f"127.0.0.1:{their_port}"]
    assert "alerting" in ours and "alerting" in theirs
    # The dashboards' job variable looks for the same job.
    for path in DASHBOARDS.glob("*.json"):
        variables = json.loads(path.read_text())["templating"]["list"]
        (job,) = [v for v in variables if v["name"] == "job"]
        assert 'job="celery"' in job["query"], path.name


def _flag_value_pair(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def _queue_flags(argv: list[str]) -> list[str]:
    return sorted(argv[i + 1] for i, token in enumerate(argv) if token == "--queue")


def test_stack_and_compose_run_the_same_workers_and_exporter(
        compose: Compose, stack_spawns: dict[str, Any]) -> None:
    def worker_shape(argv: list[str], env: dict[str, str]) -> tuple[str, str, str]:
        queues = argv[argv.index("-Q") + 1]
        return queues, argv[argv.index("-c") + 1], env.get("CELERY_WORKER_PREFETCH_MULTIPLIER",
                                                          "1")

    ours = sorted(worker_shape(compose.command(name), compose.environment(name))
                  for name in compose.services_with_target("app")
                  if compose.command(name)[:1] == ["celery"] and "worker" in compose.command(name))
    theirs = sorted(worker_shape(spawn["argv"], spawn["env"])
                    for name, spawn in stack_spawns.items() if name.startswith("worker"))
    assert ours == theirs

    our_exporter = compose.command("exporter")
    their_exporter = stack_spawns["exporter"]["argv"]
    assert _queue_flags(our_exporter) == _queue_flags(their_exporter)
    for flag in ("--probe-interval", "--inspect-interval"):
        assert _flag_value_pair(our_exporter, flag) == _flag_value_pair(their_exporter, flag)

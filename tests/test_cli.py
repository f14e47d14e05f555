"""Flags and environment: bad input exits non-zero naming the flag; secrets stay hidden."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from celery_events_exporter import metrics as m
from celery_events_exporter.cli import build_parser, config_from_args
from celery_events_exporter.config import ConfigError, redact_url, with_password


def config(*argv: str, env: dict[str, str] | None = None, monkeypatch=None):
    return config_from_args(build_parser().parse_args(list(argv)))


def run_cli_env() -> dict[str, str]:
    """This process's environment without any Celery or Django settings of its own."""
    import os

    return {k: v for k, v in os.environ.items()
            if not k.startswith("CELERY_") and k != "DJANGO_SETTINGS_MODULE"}


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = run_cli_env()
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "celery_events_exporter.cli", *argv],
                          capture_output=True,
                          text=True, timeout=60, env=full_env)


@pytest.mark.parametrize(("argv", "flag"), [
    (["--broker-url", "not-a-url"], "--broker-url"),
    (["--broker-url", "redis://:secret@h:notaport/0"], "--broker-url"),
    (["--broker-url", "redis://h/0", "--queue-wait-buckets", "1,x"], "--queue-wait-buckets"),
    (["--broker-url", "redis://h/0", "--runtime-buckets", "2,1"], "--runtime-buckets"),
    (["--broker-url", "redis://h/0", "--prefetch-wait-buckets", "-1,1"], "--prefetch-wait-buckets"),
    (["--broker-url", "redis://h/0", "--worker-label", "pods"], "--worker-label"),
    (["--broker-url", "redis://h/0", "--worker-label", "regex"], "--worker-label-regex"),
    (["--broker-url", "redis://h/0", "--worker-label", "regex", "--worker-label-regex", "("],
     "--worker-label-regex"),
    (["--broker-url", "redis://h/0", "--label", "bad-name=x"], "--label"),
    (["--broker-url", "redis://h/0", "--prefix", "9bad"], "--prefix"),
    (["--broker-url", "redis://h/0", "--port", "70000"], "--port"),
    (["--broker-url", "redis://h/0", "--max-series", "0"], "--max-series"),
    (["--broker-url", "redis://h/0", "--worker-timeout", "-1"], "--worker-timeout"),
    (["--broker-url", "redis://h/0", "--port", "abc"], "--port"),
    (["--broker-url", "redis://h/0", "--no-such-flag"], "--no-such-flag"),
    (["--broker-url", "redis://h/0", "--web-config-file", "/nonexistent.yml"],
     "--web-config-file"),
    (["--broker-url", "redis://h/0", "--broker-password-file", "/nonexistent"],
     "--broker-password-file"),
    ([], "--broker-url"),
])
def test_bad_flags_exit_non_zero_naming_the_flag(argv: list[str], flag: str) -> None:
    result = run_cli(*argv)
    assert result.returncode == 2, result
    assert flag in result.stderr, result.stderr
    assert "secret" not in result.stderr


def test_env_vars_configure_every_flag() -> None:
    import os

    env = {"CELERY_EVENTS_EXPORTER_BROKER_URL": "amqp://u:p@rabbit:5672//",
           "CELERY_EVENTS_EXPORTER_PORT": "9999", "CELERY_EVENTS_EXPORTER_QUEUE": "a,b",
           "CELERY_EVENTS_EXPORTER_NO_INSPECT": "true",
           "CELERY_EVENTS_EXPORTER_WORKER_LABEL": "host"}
    old = dict(os.environ)
    os.environ.update(env)
    try:
        cfg = config_from_args(build_parser().parse_args([]))
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert (cfg.broker_url, cfg.port, cfg.queues, cfg.inspect) == (
        "amqp://u:p@rabbit:5672//", 9999, ("a", "b"), False)
    assert cfg.state.labels.worker_mode == "host"
    assert cfg.is_amqp


def test_flags_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_EVENTS_EXPORTER_PORT", "9999")
    cfg = config_from_args(build_parser().parse_args(["--broker-url", "redis://h/0",
                                                      "--port", "1234"]))
    assert cfg.port == 1234


def test_broker_from_django_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mysite_settings.py").write_text(textwrap.dedent("""
        CELERY_BROKER_URL = "redis://cache:6379/2"
        CELERY_BROKER_TRANSPORT_OPTIONS = {"global_keyprefix": "app:"}
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CELERY_EVENTS_EXPORTER_BROKER_URL", raising=False)
    cfg = config_from_args(build_parser().parse_args(["--django-settings", "mysite_settings"]))
    assert cfg.broker_url == "redis://cache:6379/2"
    assert cfg.transport_options == {"global_keyprefix": "app:"}


def test_bad_django_settings_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERY_EVENTS_EXPORTER_BROKER_URL", raising=False)
    with pytest.raises(ConfigError, match="--django-settings"):
        config_from_args(build_parser().parse_args(["--django-settings", "no.such.module"]))


def test_transport_options_and_buckets() -> None:
    cfg = config_from_args(build_parser().parse_args([
        "--broker-url", "sentinel://s1:26379;sentinel://s2:26379",
        "--transport-option", "master_name=mymaster",
        "--transport-option", "priority_steps=[0,5]",
        "--transport-option", "fanout_prefix=false",
        "--queue-wait-buckets", "0.1,1,10"]))
    assert cfg.transport_options == {"master_name": "mymaster", "priority_steps": [0, 5],
                                     "fanout_prefix": False}
    assert cfg.state.buckets_for(m.QUEUE_WAIT) == (0.1, 1.0, 10.0)
    assert cfg.state.buckets_for(m.RUNTIME) == m.RUNTIME_BUCKETS
    assert cfg.is_redis


def test_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cr:t/@\n")
    cfg = config_from_args(build_parser().parse_args([
        "--broker-url", "amqp://user@rabbit:5672//", "--broker-password-file", str(secret)]))
    assert cfg.broker_url == "amqp://user:s3cr%3At%2F%40@rabbit:5672//"
    assert "s3cr" not in cfg.redacted_broker_url


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
    ("amqp://guest:hunter2@rabbit:5672//", "amqp://guest:***@rabbit:5672//"),
    ("redis://cache:6379/0", "redis://cache:6379/0"),
    ("sentinel://:hunter2@s1:26379;sentinel://:hunter2@s2:26379",
     "sentinel://:***@s1:26379;sentinel://:***@s2:26379"),
])
def test_redaction(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_with_password_keeps_the_rest() -> None:
    assert with_password("redis://cache:6379/1", "p w") == "redis://:p%20w@cache:6379/1"


def test_check_subcommand_rejects_bad_flags() -> None:
    result = run_cli("check", "--broker-url", "redis://h/0", "--seconds", "0")
    assert result.returncode == 2 and "--seconds" in result.stderr


def test_explicit_broker_url_wins_over_django_settings_module_in_the_environment() -> None:
    """A container image without the Django project, DJANGO_SETTINGS_MODULE still set by the
    deployment: with --broker-url the settings module is not imported at all."""
    env = {"DJANGO_SETTINGS_MODULE": "no_such_project.settings"}
    code = ("from celery_events_exporter.cli import build_parser, config_from_args; "
            "print(config_from_args(build_parser().parse_args("
            "['--broker-url', 'redis://cache:6379/3'])).broker_url)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, env={**run_cli_env(), **env})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "redis://cache:6379/3"

    from tests.support.servers import free_port

    # The whole `check` command too: it fails on the dead broker, not on the settings.
    check = run_cli("check", "--broker-url", f"redis://127.0.0.1:{free_port()}/0",
                    "--seconds", "0.5", "--no-inspect", env=env)
    assert check.returncode == 1, check
    assert "could not connect to the broker" in check.stdout, check.stdout
    assert "django-settings" not in check.stdout + check.stderr


def test_django_settings_module_in_the_environment_is_used_without_a_url(
        tmp_path: Path) -> None:
    (tmp_path / "envsite_settings.py").write_text('CELERY_BROKER_URL = "redis://cache:6379/4"\n')
    code = ("from celery_events_exporter.cli import build_parser, config_from_args; "
            "print(config_from_args(build_parser().parse_args([])).broker_url)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path,
                            env={**run_cli_env(), "DJANGO_SETTINGS_MODULE": "envsite_settings",
                                 "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "redis://cache:6379/4"


def test_broken_django_settings_module_without_a_url_names_the_variable() -> None:
    result = run_cli(env={"DJANGO_SETTINGS_MODULE": "no_such_project.settings"})
    assert result.returncode == 2, result
    assert "DJANGO_SETTINGS_MODULE: cannot import 'no_such_project.settings'" in result.stderr


def test_check_and_cli_do_not_import_each_other() -> None:
    code = ("import sys, celery_events_exporter.check; "
            "assert 'celery_events_exporter.cli' not in sys.modules; "
            "import celery_events_exporter.cli; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, env=run_cli_env())
    assert result.stdout.strip() == "ok", result.stderr

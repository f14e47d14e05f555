"""Broker credentials and TLS options from files and the environment, never logged.

A private Redis with TLS (certificates generated here) and `requirepass`. The exporter gets
the URL (with the TLS options) from CELERY_EVENTS_EXPORTER_BROKER_URL and the password from
--broker-password-file, runs at DEBUG with fast probes, sees the broker die and come back,
and a second exporter tries a wrong password. Then every byte the processes wrote, every
HTTP page and the process command lines are searched for either password.
(The RabbitMQ variant, a broker user with its own password, is in test_broker_faults.py.)
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support.certs import make_pki
from tests.support.procs import EXPORTER, Producer, exporter, pick, wait_until
from tests.support.servers import RedisServer, free_port


def _forms(password: str) -> list[str]:
    """The password as it could leak: raw, URL-quoted, and its random core."""
    return [password, quote(password, safe=""), password.split("-", 1)[1]]


@pytest.mark.redis
@pytest.mark.slow
def test_broker_password_never_logged(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    password = "p@ss:w/rd%#-" + secrets.token_hex(16)
    wrong = "wrong@pass-" + secrets.token_hex(16)
    port = free_port()
    server = RedisServer(port, extra_args=(
        "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(pki.server_cert),
        "--tls-key-file", str(pki.server_key), "--tls-ca-cert-file", str(pki.ca),
        "--tls-auth-clients", "no", "--requirepass", password))
    tls_query = f"ssl_cert_reqs=required&ssl_ca_certs={pki.ca}"
    url = f"rediss://127.0.0.1:{port}/0?{tls_query}"
    secret_file = tmp_path / "broker-password"
    secret_file.write_text(password + "\n")
    wrong_file = tmp_path / "wrong-password"
    wrong_file.write_text(wrong)
    outputs: dict[str, str] = {}
    flags = ("--log-level", "DEBUG", "--probe-interval", "1", "--inspect-interval", "2",
             "--probe-timeout", "1")
    try:
        server.start()
        env = {"CELERY_EVENTS_EXPORTER_BROKER_URL": url,
               "CELERY_EVENTS_EXPORTER_BROKER_PASSWORD_FILE": str(secret_file)}
        with exporter(None, *flags, env=env) as exp, \
                exporter(None, *flags, env={**env, "CELERY_EVENTS_EXPORTER_BROKER_PASSWORD_FILE":
                                            str(wrong_file)}) as bad:
            wait_until(lambda: exp.value("celery_exporter_broker_connected") == 1, 30,
                       what="TLS + AUTH connection")
            full = f"rediss://:{quote(password, safe='')}@127.0.0.1:{port}/0?{tls_query}"
            producer = Producer(full)
            producer.send(5)
            producer.close()
            wait_until(lambda: exp.value("celery_task_sent_total") == 5, 30,
                       what="5 task-sent events over TLS")
            # Let the probes run (queue probe, inspect) and fail on the wrong password.
            wait_until(lambda: "AUTH refused" in bad.log(), 30, what="the refused AUTH log")
            assert bad.value("celery_exporter_broker_connected") == 0

            server.kill()
            wait_until(lambda: exp.value("celery_exporter_broker_connected") == 0, 30,
                       what="disconnected")
            wait_until(lambda: "probe redis_queues failed" in exp.log(), 15,
                       what="a failed probe while the broker is down")
            time.sleep(1)
            server.start()
            wait_until(lambda: exp.value("celery_exporter_broker_connected") == 1, 60,
                       what="reconnected")
            for e in (exp, bad):
                for path in ("/", "/metrics", "/readyz", "/healthz"):
                    outputs[f"{path} of exporter {e.port}"] = e.get(path).text
                outputs[f"cmdline of {e.port}"] = Path(
                    f"/proc/{e.proc.pid}/cmdline").read_text()  # type: ignore[union-attr]
            samples = exp.samples()
            assert pick(samples, "celery_exporter_broker_reconnects_total") >= 1
        # Logs are complete once the processes have exited.
        outputs["exporter log"] = exp.log()
        outputs["wrong-password exporter log"] = bad.log()
        check = subprocess.run([EXPORTER, "check", "--seconds", "2"], env={
            **exp.env, "CELERY_EVENTS_EXPORTER_BROKER_PASSWORD_FILE": str(secret_file)},
            capture_output=True, text=True, timeout=120)
        outputs["check output"] = check.stdout + check.stderr
        # `check` reached the broker with the password file and TLS options from env.
        assert "Listened for 2s." in outputs["check output"], outputs["check output"]
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)

    logs = outputs["exporter log"]
    assert "DEBUG" in logs and "retrying in" in logs and "probe" in logs
    assert "rediss://:***@127.0.0.1" in logs
    assert "AUTH refused" in outputs["wrong-password exporter log"]
    leaks = [(where, form) for where, text in outputs.items()
             for form in _forms(password) + _forms(wrong) if form in text]
    assert leaks == []
    size = sum(len(t) for t in outputs.values())
    print(f"\nsecrets: {len(outputs)} outputs ({size} bytes: DEBUG logs through TLS connect, "
          f"AUTH failure, broker loss, probe failures, reconnect; pages; cmdlines; `check`) "
          "contain neither password")

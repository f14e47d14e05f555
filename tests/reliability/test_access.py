"""Access control on the real HTTP server: TLS and bcrypt basic auth from
`--web-config-file` (exporter-toolkit format), health endpoints open or protected, mutual
TLS. Certificates are generated per test; the client is `requests` over real TLS.

The exporter needs no broker to serve: it points at a closed port and says so in its
metrics, which is all these tests need.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import bcrypt
import pytest
import requests
import yaml

from tests.reliability.conftest import promtool_check
from tests.support.certs import Pki, make_pki
from tests.support.procs import EXPORTER, ExporterProc, exporter, wait_until
from tests.support.servers import free_port, stop_proc

USER, PASSWORD = "prometheus", "correct horse battery staple"
HTPASSWD_USER, HTPASSWD_PASSWORD = "htpasswd", "s3cret-from-htpasswd"


def _no_broker() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def _web_config(tmp_path: Path, pki: Pki, tls: dict | None = None,
                users: bool = True) -> Path:
    doc: dict = {"tls_server_config": {"cert_file": pki.server_cert.name,
                                       "key_file": pki.server_key.name, **(tls or {})}}
    if users:
        # bcrypt at cost 10, as `htpasswd -nBC 10` makes; the second in htpasswd's $2y$ form.
        y = bcrypt.hashpw(HTPASSWD_PASSWORD.encode(), bcrypt.gensalt(10)).decode()
        doc["basic_auth_users"] = {
            USER: bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode(),
            HTPASSWD_USER: "$2y$" + y[4:],
        }
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _raw_auth(exp: ExporterProc, header: str) -> requests.Response:
    return requests.get(exp.base + "/metrics", headers={"Authorization": header},
                        verify=exp.verify, timeout=10)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_metrics_over_tls_with_basic_auth(tmp_path: Path, pki: Pki, promtool: str) -> None:
    config = _web_config(tmp_path, pki)
    with exporter(_no_broker(), "--web-config-file", str(config), "--probe-interval", "0",
                  "--no-inspect", scheme="https", verify=str(pki.ca),
                  auth=(USER, PASSWORD)) as exp:
        ok = exp.get("/metrics")
        assert ok.status_code == 200
        assert "celery_exporter_broker_connected 0.0" in ok.text
        promtool_check(promtool, ok.text)
        htpasswd = exp.get("/metrics", auth=(HTPASSWD_USER, HTPASSWD_PASSWORD))
        assert htpasswd.status_code == 200

        refused = {
            "no credentials": requests.get(exp.base + "/metrics", verify=exp.verify,
                                           timeout=10),
            "wrong password": exp.get("/metrics", auth=(USER, PASSWORD + "x")),
            "empty password": exp.get("/metrics", auth=(USER, "")),
            "other user's password": exp.get("/metrics", auth=(USER, HTPASSWD_PASSWORD)),
            "unknown user": exp.get("/metrics", auth=("admin", PASSWORD)),
            "not base64": _raw_auth(exp, "Basic !!!not-base64!!!"),
            "not utf-8": _raw_auth(exp, "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode()),
            "no colon": _raw_auth(exp, "Basic " + base64.b64encode(USER.encode()).decode()),
            "bearer": _raw_auth(exp, "Bearer " + PASSWORD),
            # bcrypt reads 72 bytes at most; longer passwords are refused, not a traceback.
            "80-byte password": exp.get("/metrics", auth=(USER, PASSWORD + "x" * 52)),
            "80-byte password, unknown user": exp.get("/metrics", auth=("admin", "y" * 80)),
            "landing page": requests.get(exp.base + "/", verify=exp.verify, timeout=10),
        }
        for what, r in refused.items():
            assert r.status_code == 401, what
            assert r.headers["WWW-Authenticate"].startswith("Basic "), what
            assert "celery_" not in r.text, what

        # Health endpoints are open unless --protect-health.
        assert requests.get(exp.base + "/healthz", verify=exp.verify, timeout=10).text == "ok\n"
        ready = requests.get(exp.base + "/readyz", verify=exp.verify, timeout=10)
        assert ready.status_code == 503 and "not connected" in ready.text

        # Real TLS: an unknown CA, and the system trust store, both fail verification.
        for verify in (str(pki.other_ca), True):
            with pytest.raises(requests.exceptions.SSLError):
                requests.get(exp.base + "/metrics", auth=(USER, PASSWORD), verify=verify,
                             timeout=10)
        # Plain HTTP on the TLS port gets nothing.
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://127.0.0.1:{exp.port}/metrics", auth=(USER, PASSWORD),
                         timeout=10)
        # min_version defaults to TLS 1.2.
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(pki.ca)
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        with socket.create_connection(("127.0.0.1", exp.port), 10) as raw, \
                pytest.raises(ssl.SSLError):
            old.wrap_socket(raw, server_hostname="127.0.0.1")

        # A client that connects and never handshakes does not hold up the others.
        with socket.create_connection(("127.0.0.1", exp.port), 10):
            assert exp.get("/metrics").status_code == 200
        assert exp.proc.poll() is None  # type: ignore[union-attr]
        print(f"\nTLS + basic auth: 2 users accepted, {len(refused)} bad requests refused "
              "with 401, unknown CA / plain HTTP / TLS 1.1 refused")


def test_protect_health(tmp_path: Path, pki: Pki) -> None:
    config = _web_config(tmp_path, pki)
    with exporter(_no_broker(), "--web-config-file", str(config), "--protect-health",
                  "--probe-interval", "0", "--no-inspect", scheme="https",
                  verify=str(pki.ca), auth=(USER, PASSWORD)) as exp:
        for path in ("/healthz", "/readyz", "/metrics"):
            r = requests.get(exp.base + path, verify=exp.verify, timeout=10)
            assert r.status_code == 401, path
            r = exp.get(path, auth=(USER, "wrong"))
            assert r.status_code == 401, path
        assert exp.get("/healthz").status_code == 200
        assert exp.get("/readyz").status_code == 503  # authorised; the broker is absent
    # The environment variable does the same as the flag.
    with exporter(_no_broker(), "--web-config-file", str(config), "--probe-interval", "0",
                  "--no-inspect", scheme="https", verify=str(pki.ca), auth=(USER, PASSWORD),
                  env={"CELERY_EVENTS_EXPORTER_PROTECT_HEALTH": "true"}) as exp:
        assert requests.get(exp.base + "/healthz", verify=exp.verify,
                            timeout=10).status_code == 401


def test_mutual_tls(tmp_path: Path, pki: Pki) -> None:
    config = _web_config(tmp_path, pki, tls={"client_auth_type": "RequireAndVerifyClientCert",
                                             "client_ca_file": pki.ca.name}, users=False)
    client = (str(pki.client_cert), str(pki.client_key))
    with exporter(_no_broker(), "--web-config-file", str(config), "--probe-interval", "0",
                  "--no-inspect", scheme="https", verify=str(pki.ca), cert=client) as exp:
        assert exp.get("/metrics").status_code == 200
        # Without a client certificate the handshake fails (TLS 1.3 may report it on read).
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            requests.get(exp.base + "/metrics", verify=exp.verify, timeout=10)
        # A certificate from another CA is refused too: the server's own cert is not a
        # client cert of our CA, so present it with its key.
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            requests.get(exp.base + "/metrics", verify=exp.verify, timeout=10,
                         cert=(str(pki.server_cert), str(pki.server_key)))
        assert exp.get("/metrics").status_code == 200


def test_slow_clients_do_not_stop_a_scrape(tmp_path: Path, pki: Pki) -> None:
    """500 slowloris connections (half stalled before the TLS handshake, half trickling a
    request head over TLS) against the real process; a scrape with credentials is still
    answered within Prometheus' default scrape timeout, and the process keeps one thread
    per worker, not one per connection."""
    config = _web_config(tmp_path, pki)
    with exporter(_no_broker(), "--web-config-file", str(config), "--probe-interval", "0",
                  "--no-inspect", scheme="https", verify=str(pki.ca),
                  auth=(USER, PASSWORD)) as exp:
        pid = exp.proc.pid  # type: ignore[union-attr]
        threads_before = len(list(Path(f"/proc/{pid}/task").iterdir()))
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        slow: list[socket.socket] = []
        try:
            for i in range(500):
                raw = socket.create_connection(("127.0.0.1", exp.port), 10)
                if i % 2:
                    tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
                    tls.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                    slow.append(tls)
                else:
                    slow.append(raw)
            r = exp.get("/metrics", timeout=10)  # Prometheus' default scrape_timeout
            assert r.status_code == 200 and "celery_exporter_build_info" in r.text
            threads = len(list(Path(f"/proc/{pid}/task").iterdir()))
            # Not one per connection (the old server had 504 here); a few spare for the
            # process' own threads (the broker reconnect loop) coming and going.
            assert threads <= threads_before + 5, (threads_before, threads)
        finally:
            for s in slow:
                s.close()
        assert exp.get("/metrics").status_code == 200


def test_web_header_timeout_and_bad_limits() -> None:
    """The flag (here through its environment variable) sets the gate's deadline: a client
    that stops mid-head gets 408 and is closed. Bad values stop start-up naming the flag."""
    with exporter(_no_broker(), "--probe-interval", "0", "--no-inspect",
                  env={"CELERY_EVENTS_EXPORTER_WEB_HEADER_TIMEOUT": "0.5"}) as exp, \
            socket.create_connection(("127.0.0.1", exp.port), 10) as slow:
        slow.sendall(b"GET /metrics HTTP/1.1\r\n")
        assert slow.recv(4096).startswith(b"HTTP/1.0 408 ")
        assert exp.get("/healthz").status_code == 200
    for flag, value, message in (("--web-header-timeout", "0", "must be more than 0 seconds"),
                                 ("--web-max-connections", "0", "must be at least 1")):
        r = subprocess.run([EXPORTER, "--broker-url", _no_broker(), "--host", "127.0.0.1",
                            "--port", str(free_port()), flag, value],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and f"{flag}: {message}" in r.stderr, r.stderr


@pytest.mark.parametrize(("tls", "message"), [
    ({"client_auth_type": "RequireAndVerifyClientCert"}, "needs client_ca_file"),
    ({"client_auth_type": "RequestClientCert", "client_ca_file": "ca.pem"},
     "verifies no client certificate"),
])
def test_nonsense_client_auth_refused_at_start(tmp_path: Path, pki: Pki, tls: dict,
                                               message: str) -> None:
    config = _web_config(tmp_path, pki, tls=tls, users=False)
    r = subprocess.run([EXPORTER, "--broker-url", _no_broker(), "--host", "127.0.0.1",
                        "--port", str(free_port()), "--web-config-file", str(config)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "--web-config-file: " in r.stderr and message in r.stderr, r.stderr


@pytest.mark.prometheus
@pytest.mark.slow
def test_prometheus_scrapes_over_mutual_tls_with_basic_auth(tmp_path: Path, pki: Pki) -> None:
    """A real Prometheus (Go's TLS client) scrapes through the connection gate with a client
    certificate and a password; the same job without the certificate is refused."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:  # fail, not skip: interoperability is the point
        pytest.fail("prometheus is not installed (apt-get install prometheus)")
    config = _web_config(tmp_path, pki, tls={"client_auth_type": "RequireAndVerifyClientCert",
                                             "client_ca_file": pki.ca.name})
    with exporter(_no_broker(), "--web-config-file", str(config), "--probe-interval", "0",
                  "--no-inspect", scheme="https", verify=str(pki.ca), auth=(USER, PASSWORD),
                  cert=(str(pki.client_cert), str(pki.client_key))) as exp:
        job = {"scrape_interval": "1s", "scrape_timeout": "1s", "scheme": "https",
               "static_configs": [{"targets": [f"127.0.0.1:{exp.port}"]}],
               "basic_auth": {"username": USER, "password": PASSWORD}}
        tls = {"ca_file": str(pki.ca), "server_name": "127.0.0.1"}
        prom_config = tmp_path / "prometheus.yml"
        prom_config.write_text(yaml.safe_dump({"scrape_configs": [
            {**job, "job_name": "mtls", "tls_config": {
                **tls, "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}},
            {**job, "job_name": "no-cert", "tls_config": tls},
        ]}))
        port = free_port()
        proc = subprocess.Popen([prometheus, f"--config.file={prom_config}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            def targets() -> dict[str, dict]:
                r = requests.get(f"http://127.0.0.1:{port}/api/v1/targets", timeout=10)
                return {t["labels"]["job"]: t for t in r.json()["data"]["activeTargets"]}

            def scraped() -> dict[str, dict] | None:
                with contextlib.suppress(requests.exceptions.RequestException, KeyError):
                    found = targets()
                    if {job: t["health"] for job, t in found.items()} == {
                            "mtls": "up", "no-cert": "down"}:
                        return found
                return None

            found = wait_until(scraped, 60, what="Prometheus to scrape both jobs")
            assert found["mtls"]["lastError"] == ""
            print(f"\nPrometheus: mtls job up; no-cert job down: "
                  f"{found['no-cert']['lastError']}")
            assert "certificate" in found["no-cert"]["lastError"], found["no-cert"]
            r = requests.get(f"http://127.0.0.1:{port}/api/v1/query", timeout=10,
                             params={"query": 'celery_exporter_broker_connected{job="mtls"}'})
            assert r.json()["data"]["result"][0]["value"][1] == "0"
        finally:
            stop_proc(proc)


def test_plaintext_password_in_web_config_is_refused(tmp_path: Path) -> None:
    """A password where a bcrypt hash belongs stops start-up, and is not echoed."""
    secret = "plain-text-password-123"
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"basic_auth_users": {USER: secret}}))
    r = subprocess.run([EXPORTER, "--broker-url", _no_broker(), "--host", "127.0.0.1",
                        "--port", str(free_port()), "--web-config-file", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "not a bcrypt hash" in r.stderr
    assert secret not in r.stdout + r.stderr

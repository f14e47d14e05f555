"""The HTTP server in-process, over real sockets on 127.0.0.1: the handler's answers (gzip,
404, HEAD, 500, landing page), basic auth, every client_auth_type with a real TLS client,
and the connection gate's bounds (slow clients, header size and time, connection count).

Certificates are generated per test (tests/support/certs.py, plus a self-signed client
certificate from no CA we trust); bcrypt hashes use low cost factors to keep the suite fast,
the cost property itself is asserted, not timed (benchmarks/auth_timing.py measures it).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import gzip
import http.client
import ipaddress
import logging
import resource
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily

from celery_events_exporter import webauth, webconfig
from celery_events_exporter.config import ConfigError
from celery_events_exporter.http import ExporterServer, serve
from celery_events_exporter.webconfig import WebConfig
from celery_events_exporter.webgate import Limits, fd_budget
from tests.support.certs import Pki, make_pki
from tests.support.procs import wait_until

SCRAPE_TIMEOUT = 10.0  # Prometheus' default scrape_timeout: the functional bound here


class Flaky:
    """A collector that raises while `broken` is set."""

    def __init__(self) -> None:
        self.broken = False

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.broken:
            raise RuntimeError("collector exploded")
        yield GaugeMetricFamily("flaky_up", "1 while the flaky collector works", value=1)


class Blocking:
    """A collector that holds each scrape until released (to occupy worker threads)."""

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        self.entered.release()
        self.release.wait(30)
        yield GaugeMetricFamily("blocking_up", "1", value=1)


def _registry(*collectors: object) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    Counter("demo_requests", "a counter so the exposition has a body", registry=reg).inc(3)
    for c in collectors:
        reg.register(c)  # type: ignore[arg-type]
    return reg


@contextlib.contextmanager
def running(registry: CollectorRegistry | None = None, web: WebConfig | None = None,
            ready: tuple[bool, str] = (True, "connected; 2 live worker(s)"),
            about: str = "broker redis://127.0.0.1:6379/0",
            limits: Limits | None = None) -> Iterator[ExporterServer]:
    server = ExporterServer(("127.0.0.1", 0), registry or _registry(), lambda: ready, web,
                            about=about, limits=limits)
    serve(server)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _raw(port: int, request: bytes, timeout: float = SCRAPE_TIMEOUT) -> bytes:
    """Send a raw request and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _get(port: int, path: str, headers: dict[str, str] | None = None,
         method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=SCRAPE_TIMEOUT)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


# -- the handler ----------------------------------------------------------------------------

def test_gzip_only_when_asked() -> None:
    with running() as server:
        port = server.server_address[1]
        status, headers, plain = _get(port, "/metrics", {"Accept-Encoding": "identity"})
        assert status == 200 and "content-encoding" not in headers
        assert b"demo_requests_total 3.0" in plain
        status, headers, packed = _get(port, "/metrics", {"Accept-Encoding": "gzip, br"})
        assert status == 200 and headers["content-encoding"] == "gzip"
        assert int(headers["content-length"]) == len(packed)
        assert gzip.decompress(packed) == plain


def test_unknown_path_is_404() -> None:
    with running() as server:
        status, _, body = _get(server.server_address[1], "/metrics/extra")
        assert status == 404 and b"see /" in body
        # A query string does not change the route.
        assert _get(server.server_address[1], "/metrics?x=1")[0] == 200


def test_head_has_headers_and_no_body() -> None:
    with running() as server:
        port = server.server_address[1]
        _, get_headers, body = _get(port, "/metrics", {"Accept-Encoding": "identity"})
        raw = _raw(port, b"HEAD /metrics HTTP/1.0\r\nAccept-Encoding: identity\r\n\r\n")
        head, _, rest = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200")
        assert f"Content-Length: {len(body)}".encode() in head
        assert get_headers["content-length"] == str(len(body))
        assert rest == b""


def test_collector_that_raises_gives_500_then_recovers(caplog: pytest.LogCaptureFixture) -> None:
    flaky = Flaky()
    with running(_registry(flaky)) as server:
        port = server.server_address[1]
        flaky.broken = True
        with caplog.at_level(logging.ERROR, logger="celery_events_exporter.http"):
            status, _, body = _get(port, "/metrics")
        assert status == 500
        assert body == b"error rendering metrics; see the exporter log\n"
        assert any("collector exploded" in (r.exc_text or "") for r in caplog.records)
        flaky.broken = False
        status, _, body = _get(port, "/metrics")
        assert status == 200 and b"flaky_up 1.0" in body


def test_landing_page_and_health() -> None:
    about = "broker redis://<host>:6379/0"
    with running(about=about, ready=(False, "not connected to the broker")) as server:
        port = server.server_address[1]
        status, headers, body = _get(port, "/")
        page = body.decode()
        assert status == 200 and headers["content-type"].startswith("text/html")
        for link in ("/metrics", "/healthz", "/readyz"):
            assert f'href="{link}"' in page
        assert "redis://&lt;host&gt;:6379/0" in page  # escaped, not markup
        assert "not ready" in page and "not connected to the broker" in page
        assert _get(port, "/healthz")[0] == 200
        status, _, body = _get(port, "/readyz")
        assert status == 503 and body == b"not connected to the broker\n"


# -- basic auth -----------------------------------------------------------------------------

def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_password_over_72_bytes_gets_401() -> None:
    long = "x" * 80
    # The hash of its first 72 bytes: bcrypt 4 silently truncated, so this pair "matched".
    users = {"prometheus": bcrypt.hashpw(long[:72].encode(), bcrypt.gensalt(4))}
    with running(web=WebConfig(users=users)) as server:
        port = server.server_address[1]
        for user in ("prometheus", "nobody"):
            status, headers, _ = _get(port, "/metrics", _basic(user, long))
            assert status == 401, user
            assert headers["www-authenticate"].startswith("Basic ")
        assert _get(port, "/metrics", _basic("prometheus", long[:72]))[0] == 200
        # 72 bytes of UTF-8 is the limit, not 72 characters.
        assert _get(port, "/metrics", _basic("prometheus", "é" * 40))[0] == 401


def test_unknown_user_costs_the_highest_configured_cost(
        monkeypatch: pytest.MonkeyPatch) -> None:
    users = {"a": bcrypt.hashpw(b"pa", bcrypt.gensalt(5)),
             "b": bcrypt.hashpw(b"pb", bcrypt.gensalt(7))}
    auth = webauth.BasicAuth(users)
    assert auth.dummy_cost == 7 and webauth.cost(auth.dummy) == 7
    # Record which hash each check runs bcrypt against (the real bcrypt still runs).
    seen: list[bytes] = []
    real = bcrypt.checkpw
    monkeypatch.setattr(webauth.bcrypt, "checkpw",
                        lambda pw, hashed: seen.append(hashed) or real(pw, hashed))
    assert not auth.check("nobody", "pb")
    assert seen == [auth.dummy]
    assert not auth.check("b", "wrong") and seen[-1] == users["b"]
    assert auth.check("b", "pb")
    calls = len(seen)
    assert auth.check("b", "pb") and len(seen) == calls  # remembered: no bcrypt again
    assert not auth.check("a", "pb")  # another user's password


def test_header_parsing() -> None:
    assert webauth.parse_header("Basic " + base64.b64encode(b"u:p:q").decode()) == ("u", "p:q")
    assert webauth.parse_header("basic " + base64.b64encode(b"u:").decode()) == ("u", "")
    for bad in ("Bearer abc", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode(),
                "Basic " + base64.b64encode(b":p").decode(),
                "Basic " + base64.b64encode(b"\xff:\xfe").decode(), ""):
        assert webauth.parse_header(bad) is None, bad


@pytest.mark.parametrize("hashed", ["$2b$xx$abc", "$2b$03$abc", "$2b$32$abc"])
def test_config_refuses_hash_without_a_valid_cost(tmp_path: Path, hashed: str) -> None:
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"basic_auth_users": {"u": hashed}}))
    with pytest.raises(ConfigError, match=r"not a bcrypt hash \(the cost factor must be 04"):
        webconfig.load(str(path))


# -- client_auth_type with a real TLS client ------------------------------------------------

def _self_signed_client(directory: Path, name: str = "stranger",
                        sans: list[x509.GeneralName] | None = None) -> tuple[str, str]:
    """A client certificate from a CA nobody here trusts (it signed itself)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                              critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def _tls_config(tmp_path: Path, pki: Pki, **tls: str) -> Path:
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"tls_server_config": {
        "cert_file": str(pki.server_cert), "key_file": str(pki.server_key), **tls}}))
    return path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


# client_auth_type -> (does the server ask for a certificate?, answered? for no
# certificate, our CA's client, a stranger's certificate)
MATRIX = {
    "NoClientCert": (False, True, True, True),
    "RequestClientCert": (True, True, True, True),
    "RequireAnyClientCert": (True, False, True, True),
    "RequireClientCert": (True, False, True, True),  # exporter-toolkit's old name
    "VerifyClientCertIfGiven": (True, True, True, False),
    "RequireAndVerifyClientCert": (True, False, True, False),
}


def _asks_for_certificate(port: int, ca: Path) -> bool:
    """Whether the server sends a CertificateRequest, as `openssl s_client` reports it
    (Python's ssl client does not tell)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the openssl command is not installed")
    r = subprocess.run([openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile",
                        str(ca)], input=b"", capture_output=True, timeout=30)
    out = r.stdout.decode(errors="replace")
    assert "BEGIN CERTIFICATE" in out, out[-2000:]  # the handshake got that far
    return "Requested Signature Algorithms" in out


@pytest.mark.parametrize("auth_type", list(MATRIX))
def test_client_auth_type(tmp_path: Path, pki: Pki, auth_type: str) -> None:
    extra = {"client_ca_file": str(pki.ca)} if auth_type.startswith(
        ("Verify", "RequireAndVerify")) else {}
    web = webconfig.load(str(_tls_config(tmp_path, pki, client_auth_type=auth_type,
                                         **extra)))
    clients = {"no certificate": None,
               "our CA's client": (str(pki.client_cert), str(pki.client_key)),
               "a stranger's certificate": _self_signed_client(tmp_path)}
    answered = {}
    with running(web=web) as server:
        answered["asks"] = _asks_for_certificate(server.server_address[1], pki.ca)
        base = f"https://127.0.0.1:{server.server_address[1]}"
        for what, cert in clients.items():
            try:
                r = requests.get(base + "/metrics", verify=str(pki.ca), cert=cert,
                                 timeout=SCRAPE_TIMEOUT)
                answered[what] = r.status_code == 200 and "demo_requests_total" in r.text
            except (requests.exceptions.SSLError, requests.exceptions.ConnectionError):
                answered[what] = False
    assert tuple(answered.values()) == MATRIX[auth_type], answered


@pytest.mark.parametrize(("tls", "message"), [
    ({"client_auth_type": "RequireAndVerifyClientCert"}, "needs client_ca_file"),
    ({"client_auth_type": "VerifyClientCertIfGiven"}, "needs client_ca_file"),
    ({"client_ca_file": "CA"}, "client_auth_type is NoClientCert"),
    ({"client_auth_type": "NoClientCert", "client_ca_file": "CA"}, "verifies no client"),
    ({"client_auth_type": "RequestClientCert", "client_ca_file": "CA"}, "verifies no client"),
    ({"client_auth_type": "RequireAnyClientCert", "client_ca_file": "CA"}, "verifies no"),
    ({"client_auth_type": "VerifyClientCert"}, "is not one of"),
    ({"cipher_suites": ["TLS_AES_128_GCM_SHA256"]}, "['cipher_suites'] are not supported"),
    ({"client_allowed_sans": ["prometheus"]}, "client_allowed_sans needs client_auth_type"),
    ({"client_auth_type": "RequestClientCert", "client_allowed_sans": ["prometheus"]},
     "with RequestClientCert a client may send no certificate"),
    ({"client_auth_type": "VerifyClientCertIfGiven", "client_ca_file": "CA",
      "client_allowed_sans": ["prometheus"]}, "client_allowed_sans needs"),
    ({"client_auth_type": "RequireAnyClientCert", "client_allowed_sans": "prometheus"},
     "client_allowed_sans must be a list"),
    ({"min_version": "TLS14"}, "min_version 'TLS14' is not one of"),
    ({"min_version": "TLS13", "max_version": "TLS12"}, "min_version is above max_version"),
], ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}" for k in v))
def test_nonsense_tls_config_refused(tmp_path: Path, pki: Pki, tls: dict,
                                     message: str) -> None:
    if tls.get("client_ca_file") == "CA":
        tls = {**tls, "client_ca_file": str(pki.ca)}
    with pytest.raises(ConfigError, match=r"^--web-config-file: ") as err:
        webconfig.load(str(_tls_config(tmp_path, pki, **tls)))
    assert message in str(err.value)


def test_client_allowed_sans(tmp_path: Path, pki: Pki) -> None:
    web = webconfig.load(str(_tls_config(
        tmp_path, pki, client_auth_type="RequireAnyClientCert",
        client_allowed_sans=["prometheus.example", "2001:db8::1"])))
    clients = {
        "allowed DNS name": ([x509.DNSName("prometheus.example")], True),
        "allowed IP, written out in full": (
            [x509.IPAddress(ipaddress.ip_address("2001:db8:0:0:0:0:0:1"))], True),
        "allowed name among others": (
            [x509.DNSName("a.example"), x509.DNSName("prometheus.example")], True),
        "another DNS name": ([x509.DNSName("grafana.example")], False),
        "no SAN at all": (None, False),
    }
    answered = {}
    with running(web=web) as server:
        base = f"https://127.0.0.1:{server.server_address[1]}"
        for i, (what, (sans, _)) in enumerate(clients.items()):
            cert = _self_signed_client(tmp_path, f"client{i}", sans)
            try:
                r = requests.get(base + "/metrics", verify=str(pki.ca), cert=cert,
                                 timeout=SCRAPE_TIMEOUT)
                answered[what] = r.status_code == 200
            except (requests.exceptions.SSLError, requests.exceptions.ConnectionError):
                answered[what] = False
        assert server.gate.stats["peer_refused"] == 2
    assert answered == {what: ok for what, (_, ok) in clients.items()}


def test_http_server_config(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"http_server_config": {"http2": False}}))
    assert not webconfig.load(str(path)).auth_required
    path.write_text(yaml.safe_dump({"http_server_config": {
        "http2": True, "headers": {"Strict-Transport-Security": "max-age=31536000"}}}))
    with pytest.raises(ConfigError, match=r"http_server_config keys \['headers'\] are not"):
        webconfig.load(str(path))


def test_max_version_is_applied(tmp_path: Path, pki: Pki) -> None:
    web = webconfig.load(str(_tls_config(tmp_path, pki, max_version="TLS12")))
    with running(web=web) as server:
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        with socket.create_connection(("127.0.0.1", server.server_address[1]), 10) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() == "TLSv1.2"


# -- the connection gate ---------------------------------------------------------------------

@pytest.fixture
def fds() -> Iterator[None]:
    """Room for ~1,000 sockets in this process (client and server ends of 500 connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    if want < 1400:
        pytest.fail(f"RLIMIT_NOFILE hard limit {hard} leaves no room for 500 connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _open_slow(port: int, count: int, first_bytes: bytes) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), 10)
        if first_bytes:
            s.sendall(first_bytes)
        socks.append(s)
    return socks


def test_slow_clients_do_not_block_a_scrape(fds: None) -> None:
    with running(limits=Limits(header_timeout=30)) as server:
        port = server.server_address[1]
        assert _get(port, "/healthz")[0] == 200  # the worker threads are up
        threads_before = threading.active_count()
        slow = _open_slow(port, 500, b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        try:
            wait_until(lambda: len(server.gate.pending) == 500, 30,
                       what="500 slow connections held by the gate")
            for s in slow[::50]:  # some keep trickling, as slowloris does
                s.sendall(b"X-a: b\r\n")
            r = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=SCRAPE_TIMEOUT)
            assert r.status_code == 200 and "demo_requests_total" in r.text
            # They cost no thread each.
            assert threading.active_count() == threads_before
            assert server.gate.stats["evicted"] == 0
        finally:
            for s in slow:
                s.close()


def test_slow_tls_clients_do_not_block_a_scrape(tmp_path: Path, pki: Pki, fds: None) -> None:
    web = webconfig.load(str(_tls_config(tmp_path, pki)))
    with running(web=web, limits=Limits(header_timeout=30)) as server:
        port = server.server_address[1]
        # Half never start the handshake; half send half a ClientHello.
        slow = _open_slow(port, 250, b"") + _open_slow(port, 250, b"\x16\x03\x01\x02\x00\x01")
        try:
            wait_until(lambda: len(server.gate.pending) == 500, 30, what="500 pending")
            r = requests.get(f"https://127.0.0.1:{port}/metrics", verify=str(pki.ca),
                             timeout=SCRAPE_TIMEOUT)
            assert r.status_code == 200
        finally:
            for s in slow:
                s.close()


def test_header_deadline_closes_idle_connections() -> None:
    with running(limits=Limits(header_timeout=0.3)) as server:
        port = server.server_address[1]
        with socket.create_connection(("127.0.0.1", port), SCRAPE_TIMEOUT) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\n")
            answer = s.recv(4096)
            assert answer.startswith(b"HTTP/1.0 408 ")
            assert s.recv(4096) == b""
        assert server.gate.stats["timed_out"] == 1
        assert not server.gate.pending


def test_oversized_head_gets_431() -> None:
    with running(limits=Limits(max_header_bytes=1024)) as server:
        port = server.server_address[1]
        big = b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 2000 + b"\r\n\r\n"
        assert _raw(port, big).startswith(b"HTTP/1.0 431 ")
        # Just under the limit is served.
        ok = b"GET /metrics HTTP/1.0\r\nX-Pad: " + b"a" * 900 + b"\r\n\r\n"
        assert _raw(port, ok).startswith(b"HTTP/1.0 200 ")


def test_connection_cap_evicts_oldest_first() -> None:
    with running(limits=Limits(max_connections=20, header_timeout=30)) as server:
        port = server.server_address[1]
        idle = _open_slow(port, 20, b"GET / HTTP/1.1\r\n")
        try:
            wait_until(lambda: len(server.gate.pending) == 20, 30, what="20 pending")
            newer = _open_slow(port, 5, b"GET / HTTP/1.1\r\n")
            wait_until(lambda: server.gate.stats["evicted"] == 5, 30, what="5 evicted")
            for s in idle[:5]:  # the five oldest are closed
                s.settimeout(SCRAPE_TIMEOUT)
                assert s.recv(16) == b""
            # A scrape still gets through (it evicts the next oldest).
            assert _get(port, "/healthz")[0] == 200
            assert server.gate.stats["evicted"] == 6 and len(server.gate.pending) == 19
        finally:
            for s in idle + newer:
                s.close()


def test_busy_workers_answer_503_beyond_the_queue() -> None:
    blocking = Blocking()
    limits = Limits(workers=1, max_queued=1)
    with running(_registry(blocking), limits=limits) as server:
        port = server.server_address[1]
        results: list[int] = []
        first = threading.Thread(target=lambda: results.append(_get(port, "/metrics")[0]))
        first.start()
        try:
            assert blocking.entered.acquire(timeout=SCRAPE_TIMEOUT)  # the worker is held
            second = threading.Thread(
                target=lambda: results.append(_get(port, "/metrics")[0]))
            second.start()
            wait_until(lambda: server.gate.ready.qsize() == 1, 30, what="one queued")
            assert _raw(port, b"GET /healthz HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 503 ")
            assert server.gate.stats["busy"] == 1
        finally:
            blocking.release.set()
            first.join(SCRAPE_TIMEOUT)
        second.join(SCRAPE_TIMEOUT)
        assert results == [200, 200]


def test_fd_budget_follows_the_descriptor_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    try:
        assert fd_budget(1024) == 512 // 2 - 64
        assert fd_budget(100) == 100
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_shutdown_closes_pending_connections() -> None:
    with running() as server:
        port = server.server_address[1]
        s = socket.create_connection(("127.0.0.1", port), SCRAPE_TIMEOUT)
        s.sendall(b"GET / HTTP/1.1\r\n")
        wait_until(lambda: len(server.gate.pending) == 1, 30, what="one pending")
    # The context manager shut the server down; the client sees the close.
    assert s.recv(16) == b""
    s.close()


def test_tls_head_split_over_records(tmp_path: Path, pki: Pki) -> None:
    """A head sent as many small TLS records at once is read whole (decrypted bytes left
    inside the SSL object do not wake the selector)."""
    web = webconfig.load(str(_tls_config(tmp_path, pki)))
    with running(web=web, limits=Limits(header_timeout=5)) as server:
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        with socket.create_connection(("127.0.0.1", server.server_address[1]), 10) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
            for piece in (b"GET /metrics HTTP/1.0\r\n", b"Host: x\r\n", b"A: b\r\n", b"\r\n"):
                tls.sendall(piece)
            answer = tls.recv(64)
        assert answer.startswith(b"HTTP/1.0 200 "), answer


class Huge:
    """One sample with a 16 MB label: an answer larger than the socket buffers."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("huge", "a large answer", labels=["pad"])
        family.add_metric(["x" * (16 << 20)], 1)
        yield family


def test_slow_reader_is_cut_off_at_the_write_deadline() -> None:
    """A client that keeps reading, but slowly (at most 256 KiB per 50 ms: the 16 MB answer
    would take over 2 s beyond what the socket buffers hold), is cut off at the 1 s write
    deadline instead of holding the only worker, and the next request is answered."""
    limits = Limits(workers=1, write_timeout=1.0)
    with running(_registry(Huge()), limits=limits) as server:
        port = server.server_address[1]
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
        slow.connect(("127.0.0.1", port))
        slow.settimeout(SCRAPE_TIMEOUT)
        slow.sendall(b"GET /metrics HTTP/1.0\r\nAccept-Encoding: identity\r\n\r\n")
        received: list[int] = []

        def trickle() -> None:
            with contextlib.suppress(OSError):
                for _ in range(1200):  # bounded: at most ~60 s
                    chunk = slow.recv(1 << 18)
                    if not chunk:
                        return
                    received.append(len(chunk))
                    time.sleep(0.05)

        reader = threading.Thread(target=trickle)
        reader.start()
        try:
            status, _, body = _get(port, "/healthz")
            assert status == 200 and body == b"ok\n"
        finally:
            reader.join(60)
            slow.close()
        assert not reader.is_alive()  # the server closed the connection
        assert 0 < sum(received) < 16 << 20  # ... before the whole answer was sent

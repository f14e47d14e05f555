"""HTTP endpoints: /metrics, /healthz, /readyz and a landing page; TLS and basic auth."""

from __future__ import annotations

import base64
import gzip
import html
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, generate_latest

from celery_events_exporter import __version__
from celery_events_exporter.collector import generate_text
from celery_events_exporter.webconfig import WebConfig

log = logging.getLogger(__name__)

Readiness = Callable[[], tuple[bool, str]]


class ExporterServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry,
                 readiness: Readiness, web: WebConfig | None = None,
                 protect_health: bool = False, about: str = "") -> None:
        self.registry = registry
        self.readiness = readiness
        self.web = web or WebConfig()
        self.protect_health = protect_health
        self.about = about
        super().__init__(address, Handler)
        if self.web.tls is not None:
            # The handshake runs in the request thread, so a slow client cannot stall accept().
            self.socket = self.web.tls.wrap_socket(self.socket, server_side=True,
                                                   do_handshake_on_connect=False)


class Handler(BaseHTTPRequestHandler):
    server: ExporterServer
    server_version = f"celery-events-exporter/{__version__}"
    timeout = 30

    def setup(self) -> None:
        super().setup()
        if self.server.web.tls is not None:
            try:
                self.connection.do_handshake()
            except (OSError, ValueError) as exc:
                log.debug("TLS handshake failed: %s", exc)
                raise

    def log_message(self, format: str, *args: object) -> None:
        # Scrapes every few seconds would drown the log; failures are logged where they happen.
        pass

    def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorized(self) -> bool:
        web = self.server.web
        if not web.auth_required:
            return True
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user = password = ""
            if user and web.check(user, password):
                return True
        self._send(401, b"Unauthorized\n",
                   headers={"WWW-Authenticate": 'Basic realm="celery-events-exporter"'})
        return False

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/healthz", "/readyz"):
            if self.server.protect_health and not self._authorized():
                return
            if path == "/healthz":
                self._send(200, b"ok\n")
                return
            ready, reason = self.server.readiness()
            self._send(200 if ready else 503, (reason + "\n").encode())
            return
        if not self._authorized():
            return
        if path == "/metrics":
            self._metrics()
        elif path == "/":
            self._send(200, self._landing().encode(), "text/html; charset=utf-8")
        else:
            self._send(404, b"Not found: see / for the endpoints\n")

    def _metrics(self) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept"))
        if encoder is generate_latest:  # the classic text format: same bytes, rendered fast
            encoder = generate_text
        started = time.perf_counter()
        try:
            output = encoder(self.server.registry)
        except Exception:
            log.exception("rendering /metrics failed")
            self._send(500, b"error rendering metrics; see the exporter log\n")
            return
        headers = {}
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            output = gzip.compress(output, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        log.debug("rendered /metrics in %.1f ms", (time.perf_counter() - started) * 1000)
        self._send(200, output, content_type, headers)

    def _landing(self) -> str:
        ready, reason = self.server.readiness()
        return (
            "<!doctype html><html><head><title>celery-events-exporter</title></head><body>"
            f"<h1>celery-events-exporter {html.escape(__version__)}</h1>"
            f"<p>{html.escape(self.server.about)}</p>"
            f"<p>Status: {'ready' if ready else 'not ready'} &mdash; {html.escape(reason)}</p>"
            '<ul><li><a href="/metrics">/metrics</a></li>'
            '<li><a href="/healthz">/healthz</a></li>'
            '<li><a href="/readyz">/readyz</a></li></ul></body></html>\n')


def serve(server: ExporterServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    return thread

"""HTTP endpoints: /metrics, /healthz, /readyz and a landing page; TLS and basic auth."""

from __future__ import annotations

import gzip
import html
import io
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import NamedTuple

from prometheus_client import CollectorRegistry

from celery_events_exporter import __version__
from celery_events_exporter.exposition import negotiate
from celery_events_exporter.webconfig import WebConfig
from celery_events_exporter.webgate import ConnectionGate, Limits

log = logging.getLogger(__name__)

Readiness = Callable[[], tuple[bool, str]]


class ExporterServer(HTTPServer):
    """Binds and listens like http.server; connections go through a ConnectionGate (see
    exporter/webgate.py) instead of a thread each."""

    allow_reuse_address = True
    request_queue_size = 128  # the listen backlog: bursts of scrapes and reconnects

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry,
                 readiness: Readiness, web: WebConfig | None = None,
                 protect_health: bool = False, about: str = "",
                 limits: Limits | None = None) -> None:
        self.registry = registry
        self.readiness = readiness
        self.web = web or WebConfig()
        self.protect_health = protect_health
        self.about = about
        super().__init__(address, Handler)
        self.gate = ConnectionGate(self.socket, self.web.tls, limits or Limits(),
                                   self._answer, self.web.peer_check)

    def _answer(self, sock: socket.socket, addr: tuple, head: bytes) -> None:
        self.RequestHandlerClass(_Request(sock, head), addr, self)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self.gate.serve_forever()

    def shutdown(self) -> None:
        self.gate.shutdown()


class _SendAll(io.RawIOBase):
    """wfile for the handler: each write is one sendall, so the socket timeout bounds the
    whole write (a client reading a byte now and then cannot hold a worker for long)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.sock.sendall(data)
        return len(data)


class _Request(NamedTuple):
    """A connection whose request head the gate has already read."""

    sock: socket.socket
    head: bytes


class Handler(BaseHTTPRequestHandler):
    server: ExporterServer
    request: _Request  # type: ignore[assignment]
    server_version = f"celery-events-exporter/{__version__}"

    def setup(self) -> None:
        self.connection = self.request.sock
        self.rfile = io.BytesIO(self.request.head)
        self.wfile = _SendAll(self.connection)

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
        if web.auth.check_header(self.headers.get("Authorization", "")):
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
        encoder, content_type = negotiate(self.headers.get("Accept"))
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

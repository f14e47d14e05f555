"""The front door of the HTTP server: connections wait here until their request head is in.

A thread per connection lets slow clients (slowloris: connect, then send a byte now and
then) pin every thread. Here one selector thread takes each connection through the TLS
handshake and the request head, non-blocking; a connection costs a file descriptor and a
small buffer until its head is complete, and only then does a worker thread see it (and
authenticate it). Bounds:
- `header_timeout`: seconds from accept to a complete request head (handshake included);
  late connections are closed (408).
- `max_header_bytes`: a longer head is answered 431 and closed.
- `max_connections`: connections still sending their head; one more closes the oldest,
  so a flood of idle connections cannot lock out a scrape that sends its request at once.
  Also kept under half the process' file descriptor limit.
- `workers` threads answer complete requests; at most `max_queued` wait for one, beyond
  that the answer is 503.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import resource
import selectors
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

Handle = Callable[[socket.socket, tuple, bytes], None]

# File descriptors kept back for everything else in the process (broker, probes, logs).
_FD_RESERVE = 64


@dataclass(frozen=True)
class Limits:
    header_timeout: float = 5.0
    max_header_bytes: int = 16384
    max_connections: int = 1024
    workers: int = 8
    max_queued: int = 64
    write_timeout: float = 10.0


def fd_budget(requested: int) -> int:
    """`requested`, capped to half of RLIMIT_NOFILE minus a reserve: the other half is for
    requests being answered and everything else the process opens."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return requested
    return max(16, min(requested, soft // 2 - _FD_RESERVE))


class _Pending:
    __slots__ = ("addr", "buf", "deadline", "handshaking", "sock")

    def __init__(self, sock: socket.socket, addr: tuple, deadline: float,
                 handshaking: bool) -> None:
        self.sock, self.addr, self.deadline = sock, addr, deadline
        self.handshaking = handshaking
        self.buf = b""


def _head_complete(buf: bytes) -> bool:
    return b"\r\n\r\n" in buf or b"\n\n" in buf


def _reply_and_close(sock: socket.socket, status: str) -> None:
    """Best effort from the selector thread: one non-blocking send, then close. Unread
    input is drained first: closing with bytes left unread resets the connection, and the
    client would lose the answer."""
    with contextlib.suppress(OSError, ValueError):
        for _ in range(16):
            if not sock.recv(65536):
                break
    with contextlib.suppress(OSError, ValueError):
        sock.send(f"HTTP/1.0 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                  .encode())
        sock.shutdown(socket.SHUT_WR)
    _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


class ConnectionGate:
    def __init__(self, listener: socket.socket, tls: ssl.SSLContext | None, limits: Limits,
                 handle: Handle,
                 peer_check: Callable[[ssl.SSLSocket], bool] | None = None) -> None:
        self.listener, self.tls, self.limits, self.handle = listener, tls, limits, handle
        self.peer_check = peer_check  # e.g. the client certificate's SANs, after handshake
        self.max_connections = fd_budget(limits.max_connections)
        self.pending: OrderedDict[int, _Pending] = OrderedDict()  # accept order
        self.ready: queue.Queue[tuple[socket.socket, tuple, bytes] | None] = queue.Queue()
        self.stats = {"evicted": 0, "timed_out": 0, "too_large": 0, "busy": 0,
                      "peer_refused": 0}
        self._stop = threading.Event()
        self._started = threading.Event()
        self._stopped = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel = selectors.DefaultSelector()
        self._accept_paused_until = 0.0

    # -- selector thread ----------------------------------------------------------------
    def serve_forever(self) -> None:
        if self._stop.is_set():  # shut down before it ever ran
            return
        self._started.set()
        workers = [threading.Thread(target=self._work, name=f"http-{i}", daemon=True)
                   for i in range(self.limits.workers)]
        for w in workers:
            w.start()
        self.listener.setblocking(False)
        self._sel.register(self.listener, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stop.is_set():
                for key, _ in self._sel.select(self._next_timeout()):
                    if key.data == "listen":
                        self._accept()
                    elif key.data == "wake":
                        self._wake_r.recv(64)
                    else:
                        try:
                            self._advance(key.data)
                        except Exception:  # a bug here must not stop the whole server
                            log.exception("connection from %s dropped", key.data.addr[0])
                            self._drop(key.data)
                self._expire()
        finally:
            for p in list(self.pending.values()):
                self._drop(p)
            for _ in workers:
                self.ready.put(None)
            for w in workers:
                w.join(self.limits.write_timeout)
            self._sel.close()
            self._close_wake()
            self._stopped.set()

    def shutdown(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._started.is_set():
            self._stopped.wait(self.limits.write_timeout + 5)
        else:
            self._close_wake()

    def _close_wake(self) -> None:
        self._wake_r.close()
        self._wake_w.close()

    def _next_timeout(self) -> float:
        now = time.monotonic()
        if self._accept_paused_until:
            return max(0.0, min(1.0, self._accept_paused_until - now))
        if not self.pending:
            return 1.0
        first = next(iter(self.pending.values()))
        return max(0.0, min(1.0, first.deadline - now))

    def _accept(self) -> None:
        for _ in range(64):  # a burst at a time, so pending connections keep moving too
            try:
                sock, addr = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # EMFILE/ENFILE: out of descriptors
                log.warning("accept failed: %s", exc)
                if self.pending:
                    self.stats["evicted"] += 1
                    self._drop(next(iter(self.pending.values())))
                else:
                    self._sel.unregister(self.listener)
                    self._accept_paused_until = time.monotonic() + 0.1
                return
            if len(self.pending) >= self.max_connections:
                self.stats["evicted"] += 1
                self._drop(next(iter(self.pending.values())))
            sock.setblocking(False)
            if self.tls is not None:
                try:
                    sock = self.tls.wrap_socket(sock, server_side=True,
                                                do_handshake_on_connect=False)
                except (OSError, ValueError) as exc:
                    log.debug("TLS wrap failed: %s", exc)
                    _close(sock)
                    continue
            p = _Pending(sock, addr, time.monotonic() + self.limits.header_timeout,
                         handshaking=self.tls is not None)
            self.pending[sock.fileno()] = p
            self._sel.register(sock, selectors.EVENT_READ, p)

    def _advance(self, p: _Pending) -> None:
        limit = self.limits.max_header_bytes
        try:
            if p.handshaking:
                p.sock.do_handshake()  # type: ignore[attr-defined]
                p.handshaking = False
                if self.peer_check is not None and not self.peer_check(p.sock):  # type: ignore[arg-type]
                    log.debug("client certificate from %s refused by client_allowed_sans",
                              p.addr[0])
                    self.stats["peer_refused"] += 1
                    self._drop(p)
                    return
            # Asking for at most one byte over the limit means a TLS record is either read
            # whole or the head is too large: no decrypted bytes wait unseen in the SSL
            # object (they would wake no selector).
            chunk = p.sock.recv(limit + 1 - len(p.buf))
            if not chunk:
                self._drop(p)
                return
            p.buf += chunk
            if _head_complete(p.buf):
                self._dispatch(p)
            elif len(p.buf) > limit:
                self.stats["too_large"] += 1
                self._forget(p)
                _reply_and_close(p.sock, "431 Request Header Fields Too Large")
        except ssl.SSLWantReadError:
            self._sel.modify(p.sock, selectors.EVENT_READ, p)
        except ssl.SSLWantWriteError:
            self._sel.modify(p.sock, selectors.EVENT_WRITE, p)
        except BlockingIOError:
            pass
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            log.debug("connection from %s dropped: %s", p.addr[0], exc)
            self._drop(p)

    def _dispatch(self, p: _Pending) -> None:
        self._forget(p)
        if self.ready.qsize() >= self.limits.max_queued:
            self.stats["busy"] += 1
            _reply_and_close(p.sock, "503 Service Unavailable")
            return
        self.ready.put((p.sock, p.addr, p.buf))

    def _expire(self) -> None:
        now = time.monotonic()
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._sel.register(self.listener, selectors.EVENT_READ, "listen")
        while self.pending:
            p = next(iter(self.pending.values()))
            if p.deadline > now:
                return
            self.stats["timed_out"] += 1
            self._forget(p)
            if p.handshaking:
                _close(p.sock)
            else:
                _reply_and_close(p.sock, "408 Request Timeout")

    def _forget(self, p: _Pending) -> None:
        self.pending.pop(p.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(p.sock)

    def _drop(self, p: _Pending) -> None:
        self._forget(p)
        _close(p.sock)

    # -- worker threads -----------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self.ready.get()
            if item is None:
                return
            sock, addr, head = item
            try:
                sock.setblocking(True)
                sock.settimeout(self.limits.write_timeout)
                self.handle(sock, addr, head)
            except (OSError, ValueError) as exc:  # the client went away or stopped reading
                log.debug("answering %s failed: %s", addr[0], exc)
            except Exception:
                log.exception("answering %s failed", addr[0])
            finally:
                with contextlib.suppress(OSError, ValueError):
                    sock.shutdown(socket.SHUT_WR)
                _close(sock)

"""A TCP proxy in front of a real broker that can stall: connections stay up, bytes stop.

This is a hung broker as a client sees it (TCP up, no answer) without stopping the broker
for everyone else, so a test can stall only the connections it points at the proxy.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

POLL = 0.1


class StallProxy:
    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(POLL)
        self.port = self.listener.getsockname()[1]
        self.stalled = threading.Event()
        self.stopping = threading.Event()
        self.sockets: list[socket.socket] = []
        self.held: list[socket.socket] = []  # accepted while stalled, answered on resume
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def stall(self) -> None:
        """Stop moving bytes either way; every connection stays open."""
        self.stalled.set()

    def resume(self) -> None:
        self.stalled.clear()
        held, self.held = self.held, []
        for client in held:
            self._connect(client)

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.sockets.append(client)
            if self.stalled.is_set():
                # A stalled broker still completes the TCP handshake (the kernel does).
                self.held.append(client)
                continue
            self._connect(client)

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, 5)
        except OSError:
            client.close()
            return
        self.sockets.append(upstream)
        thread = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
        self.threads.append(thread)
        thread.start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        while not self.stopping.is_set():
            if self.stalled.is_set():
                self.stopping.wait(POLL)
                continue
            try:
                ready, _, _ = select.select([a, b], [], [], POLL)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return self._close(a, b)
                    peer[sock].sendall(data)
            except OSError:
                return self._close(a, b)
        self._close(a, b)

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        self.stopping.set()
        self._close(self.listener, *self.sockets)
        for thread in self.threads:
            thread.join(5)

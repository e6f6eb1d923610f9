"""A TCP relay in front of a loopback sshd that can make the network go silent: ``freeze()`` turns every
connection open at that moment into a black hole (bytes either way are dropped, both sockets stay open, as when a
NAT mapping or a Wi-Fi link is lost); connections made afterwards pass normally (the network came back)."""

from __future__ import annotations

import contextlib
import socket
import threading


class FreezingRelay:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._frozen: set[int] = set()  # ids of connections gone silent
        self._open: dict[int, tuple[socket.socket, socket.socket]] = {}
        self._lock = threading.Lock()
        self._next = 0
        self._closed = False

    def __enter__(self) -> FreezingRelay:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self.listener.close()
        with self._lock:
            for pair in self._open.values():
                for sock in pair:
                    with contextlib.suppress(OSError):
                        sock.close()

    def freeze(self) -> None:
        with self._lock:
            self._frozen.update(self._open)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                ident, self._next = self._next, self._next + 1
                self._open[ident] = (client, server)
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(ident, src, dst), daemon=True).start()

    def _pump(self, ident: int, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                if ident not in self._frozen:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                return
            if ident in self._frozen:
                continue  # the black hole: read and drop
            try:
                dst.sendall(data)
            except OSError:
                return

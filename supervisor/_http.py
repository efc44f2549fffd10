"""Stdlib HTTP plumbing shared by the dashboard and the webhook receiver.

Listen addresses, the threaded server that carries its application, and the
serve-until-stopped loop. Imports only the standard library and :mod:`supervisor.errors`.
"""

from __future__ import annotations

import http.server
import socket
import threading
import typing as t

from supervisor.errors import SupervisorError

AppT = t.TypeVar("AppT")


def parse_listen(text: str, error: type[SupervisorError] = SupervisorError) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:8080``; a bare port means loopback).

    Raises
    ------
    SupervisorError
        ``error``, for a missing or bad port or host.
    """
    value = text.strip()
    if value.isdigit():
        value = f"127.0.0.1:{value}"
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535 or any(c in host for c in "/ []"):
        msg = f"listen address '{text}' is not HOST:PORT. Examples: 127.0.0.1:8080, [::1]:8080, 0.0.0.0:8080."
        raise error(msg)
    return host, int(port)


class AppServer(http.server.ThreadingHTTPServer, t.Generic[AppT]):
    """A threaded HTTP server holding the application its handlers serve (IPv6 for a host with a colon)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # socketserver's 5 resets connections in a burst

    def __init__(self, address: tuple[str, int], handler: type[http.server.BaseHTTPRequestHandler], app: AppT) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        super().__init__(address, handler)


class Handler(http.server.BaseHTTPRequestHandler):
    """A request handler whose ``Server`` header is ``server_version`` alone (no Python version)."""

    sys_version = ""

    def version_string(self) -> str:
        return self.server_version


class ServedApp:
    """Start/stop/run for an application served by an :class:`AppServer` on a background thread."""

    server: AppServer[t.Any]
    _thread: threading.Thread | None
    _stopped: threading.Event

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _serve_in_background(self, name: str) -> None:
        self._thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True)
        self._thread.start()

    def _close_server(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(5)
        self.server.server_close()

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from a signal handler)."""
        self._stopped.set()

    def run(self) -> None:
        """Serve until :meth:`stop`, then close everything."""
        try:
            self.start()
            while not self._stopped.wait(0.5):
                pass
        finally:
            self.close()

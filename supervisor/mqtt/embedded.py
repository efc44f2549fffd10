"""An in-process MQTT broker (amqtt) for a single host with no broker installed.

Optional: ``pip install 'bot-supervisor[embedded]'``. Production points the agent
at Mosquitto, EMQX or RabbitMQ instead. Binds to loopback unless told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
import typing as t

from supervisor.errors import AgentError

logger = logging.getLogger(__name__)


class EmbeddedBroker:
    """amqtt running on its own event-loop thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: t.Any = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start listening; raise :class:`AgentError` if amqtt is missing or the port is taken."""
        try:
            from amqtt.broker import Broker
        except ImportError as e:
            msg = (
                "embedded broker: amqtt is not installed. Run \"pip install 'bot-supervisor[embedded]'\" "
                "or point --broker at an existing broker."
            )
            raise AgentError(msg) from e
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.host, self.port))
            except OSError as e:
                msg = (
                    f"embedded broker: cannot listen on {self.host}:{self.port} ({e.strerror}). "
                    "A broker may already run there: drop --embedded-broker and use it."
                )
                raise AgentError(msg) from e
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._loop = asyncio.new_event_loop()
        self._broker = Broker(config, loop=self._loop)
        self._thread = threading.Thread(target=self._serve, name="embedded-broker", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._error is not None:
                msg = f"embedded broker: failed to start ({self._error})."
                raise AgentError(msg)
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.2):
                logger.info("embedded MQTT broker listening on %s:%s", self.host, self.port)
                return
            time.sleep(0.05)
        msg = f"embedded broker: not accepting connections on {self.host}:{self.port} after {timeout:g}s."
        raise AgentError(msg)

    def _serve(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._broker.start())
            self._loop.run_forever()
        except BaseException as e:  # noqa: BLE001 - handed to start(), which reports it
            self._error = e

    def stop(self, timeout: float = 3.0) -> None:
        """Shut the broker down (bounded: amqtt may wait on lingering clients)."""
        if self._loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
        with contextlib.suppress(Exception):
            future.result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout)

"""What the agent learns of a plugin bot from its own bridge: the strategy it accepted.

A ``start`` for a bot whose Hummingbot bridge answers for itself is not the
agent's to run; the strategy it names is recorded (for crash restarts) only once
the bridge answered it with 200, and a ``stop`` forgets it only then. Imports no
``paho``: the connection is handed in.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import typing as t

from supervisor.mqtt import protocol

if t.TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from supervisor.mqtt.connection import Connection

__all__ = ["WATCH_SECONDS", "StrategyWatch"]

logger = logging.getLogger(__name__)

WATCH_SECONDS = 60.0
"""How long the bridge's answer to a start or stop is waited for; later, the request is taken as not executed."""


class StrategyWatch:
    """Listens for a plugin bot's answer to a ``start``/``stop`` and records its strategy on a 200.

    Parameters
    ----------
    connection
        The agent's broker connection (subscriptions to reply topics).
    record
        ``record(instance, strategy)``: the bot accepted ``strategy`` (``None``: it stopped).
    """

    def __init__(
        self,
        connection: Connection,
        record: Callable[[str, dict[str, str] | None], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connection = connection
        self._record = record
        self._clock = clock
        self._lock = threading.Lock()
        self._waiting: dict[str, tuple[str, dict[str, str] | None, float]] = {}

    def expect(self, instance: str, reply_to: str, strategy: dict[str, str] | None) -> None:
        """Wait for the answer on ``reply_to`` to a request that starts ``strategy`` (``None``: a stop).

        Called on the network thread as the request arrives, so the subscription
        is in place before the bridge (which got the request too) answers.
        """
        try:
            topic = protocol.reply_topic(reply_to)
        except protocol.ProtocolError:
            return
        with self._lock:
            known = topic in self._waiting
            self._waiting[topic] = (instance, strategy, self._clock() + WATCH_SECONDS)
        if not known:
            self._connection.subscribe(topic, self._on_reply, qos=1)

    def _on_reply(self, topic: str, payload: bytes, _props: Mapping[str, t.Any]) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        data = message.get("data") if isinstance(message, dict) else None
        if not isinstance(data, dict) or "status" not in data:
            return  # not a reply (the request itself, if the client replies where it asked)
        with self._lock:
            waiting = self._waiting.pop(topic, None)
        if waiting is None:
            return
        self._connection.unsubscribe(topic)
        instance, strategy, _ = waiting
        if data.get("status") == protocol.STATUS_OK:
            self._record(instance, strategy)
        else:
            logger.info(
                "instance %s: its bridge refused the %s (%s): the recorded strategy stays as it was",
                instance,
                "start" if strategy else "stop",
                data.get("status"),
            )

    def expire(self) -> None:
        """Stop waiting for answers that did not come in time (the request is taken as not executed)."""
        now = self._clock()
        with self._lock:
            late = [topic for topic, (_, _, deadline) in self._waiting.items() if deadline <= now]
            for topic in late:
                del self._waiting[topic]
        for topic in late:
            self._connection.unsubscribe(topic)

    @property
    def waiting(self) -> bool:
        """Whether an answer is still awaited."""
        with self._lock:
            return bool(self._waiting)

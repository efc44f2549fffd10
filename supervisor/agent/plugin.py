"""Plugin bots (Hummingbot's own MQTT bridge answers for them): their start-up window and their answers.

* When each bridge last said ``online``, and so whether it is up: a request that
  arrives for a bot whose process is up but whose bridge is not yet subscribed is
  held, and published again for the bridge once it is up; unless the bridge answered
  the original meanwhile (it had subscribed just before saying ``online``): then
  the copy is dropped, so the bot runs the request once.
* The strategy a ``start`` names is recorded (for crash restarts) only once the
  bridge answered it with 200; a ``stop`` forgets it only then.

Imports no ``paho``: the connection is handed in. One lock guards all of it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
import typing as t

from supervisor.mqtt import protocol

if t.TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from supervisor.mqtt.connection import Connection

__all__ = ["FORWARD_GRACE", "WATCH_SECONDS", "Held", "PluginBridges"]

logger = logging.getLogger(__name__)

WATCH_SECONDS = 60.0
"""How long the bridge's answer to a start or stop is waited for; later, the request is taken as not executed."""
FORWARD_GRACE = 0.5
"""After a bridge says ``online``, how long a held request waits for the bridge's answer to the original."""


@dataclasses.dataclass
class Held:
    """A request for a plugin bot whose bridge is not up yet; published again for it once it is."""

    instance: str
    topic: str
    payload: bytes
    reply_to: str
    command: str
    key: str
    deadline: float  # monotonic: answered with an error by then
    forward_at: float | None = None  # monotonic: set once the bridge said "online"


@dataclasses.dataclass
class _Awaited:
    """What an answer on one reply topic settles: a held request, a strategy to record (or both)."""

    held: Held | None = None
    strategy: tuple[str, dict[str, str] | None] | None = None
    until: float = 0.0


class PluginBridges:
    """The agent's knowledge of plugin bots' bridges.

    Parameters
    ----------
    connection
        The agent's broker connection (publishing held requests, watching reply topics).
    launched_at
        ``launched_at(instance)``: when the bot was last launched (the registry's clock, wall time), or ``None``.
    ready_timeout
        ``ready_timeout(instance)``: how long its bridge may take to come up.
    record_strategy
        ``record_strategy(instance, strategy)``: the bridge accepted ``strategy`` (``None``: it stopped one).
    forwarded, expired
        Called for a held request published again for the bridge, and for one whose bridge never came up.
    """

    def __init__(
        self,
        connection: Connection,
        *,
        launched_at: Callable[[str], float | None],
        ready_timeout: Callable[[str], float],
        record_strategy: Callable[[str, dict[str, str] | None], None],
        forwarded: Callable[[Held], None],
        expired: Callable[[Held], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connection = connection
        self._launched_at = launched_at
        self._ready_timeout = ready_timeout
        self._record_strategy = record_strategy
        self._forwarded = forwarded
        self._expired = expired
        self._clock = clock
        self._lock = threading.Lock()
        self.listening_since = time.time()
        self._online: dict[str, float] = {}  # instance -> wall time of its bridge's last "online"
        self._held: dict[str, list[Held]] = {}
        self._awaited: dict[str, _Awaited] = {}  # reply topic -> what its answer settles

    # -- is the bridge up ------------------------------------------------------------------------

    def on_status_update(self, instance: str, payload: bytes) -> bool:
        """Note a bridge's ``online``; its held requests go out after :data:`FORWARD_GRACE` (network thread).

        Return whether a request is now due to go out (:meth:`tick` does it).
        """
        try:
            message = json.loads(payload)
        except ValueError:
            return False
        if not isinstance(message, dict) or message.get("msg") != "online":
            return False
        with self._lock:
            self._online[instance] = time.time()
            held = self._held.get(instance, [])
            for item in held:
                if item.forward_at is None:
                    item.forward_at = self._clock() + FORWARD_GRACE
            return bool(held)

    def is_up(self, instance: str) -> bool:
        """Tell whether a running plugin bot's bridge has subscribed (said ``online`` since its launch).

        A bot launched before the agent started listening, or longer ago than its
        recipe's ready timeout, is taken as up: its bridge announced itself before
        we listened, or never will.
        """
        started = self._launched_at(instance)
        with self._lock:
            return self._is_up_locked(instance, started)

    def _is_up_locked(self, instance: str, started: float | None) -> bool:
        if started is None or started < self.listening_since:
            return True
        online = self._online.get(instance)
        if online is not None and online >= started - 1.0:
            return True
        return time.time() - started > self._ready_timeout(instance)

    # -- held requests ---------------------------------------------------------------------------

    def hold(self, held: Held) -> bool:
        """Keep a request until its bot's bridge is up (publish it at once if it already is); return whether held."""
        started = self._launched_at(held.instance)
        topic = self._reply_topic(held.reply_to)
        with self._lock:
            # Checked and queued under one lock: an "online" arriving meanwhile cannot be missed.
            ready = self._is_up_locked(held.instance, started)
            if not ready:
                self._held.setdefault(held.instance, []).append(held)
                if topic is not None:
                    self._await_locked(topic, held=held, until=held.deadline)
        if ready:
            self._forward(held)
        else:
            logger.info("holding %s until the MQTT bridge of %s is up", held.topic, held.instance)
        return not ready

    def _forward(self, held: Held) -> None:
        self._forwarded(held)
        self._connection.publish(held.topic, held.payload, qos=1)

    # -- strategies --------------------------------------------------------------------------------

    def expect_strategy(self, instance: str, reply_to: str, strategy: dict[str, str] | None) -> None:
        """Record ``strategy`` (``None``: a stop) once the bridge answers the request on ``reply_to`` with 200.

        Called on the network thread as the request arrives, so the subscription
        is in place before the bridge (which got the request too) answers.
        """
        topic = self._reply_topic(reply_to)
        if topic is not None:
            with self._lock:
                self._await_locked(topic, strategy=(instance, strategy), until=self._clock() + WATCH_SECONDS)

    # -- answers -----------------------------------------------------------------------------------

    @staticmethod
    def _reply_topic(reply_to: str) -> str | None:
        try:
            return protocol.reply_topic(reply_to)
        except protocol.ProtocolError:
            return None

    def _await_locked(
        self,
        topic: str,
        *,
        held: Held | None = None,
        strategy: tuple[str, dict[str, str] | None] | None = None,
        until: float,
    ) -> None:
        awaited = self._awaited.get(topic)
        if awaited is None:
            awaited = self._awaited[topic] = _Awaited()
            self._connection.subscribe(topic, self._on_answer, qos=1)
        awaited.held = held or awaited.held
        awaited.strategy = strategy or awaited.strategy
        awaited.until = max(awaited.until, until)

    def _on_answer(self, topic: str, payload: bytes, _props: Mapping[str, t.Any]) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        data = message.get("data") if isinstance(message, dict) else None
        if not isinstance(data, dict) or "status" not in data:
            return  # not an answer (a request, if a client asks on its own reply topic)
        with self._lock:
            awaited = self._awaited.pop(topic, None)
            if awaited is not None and awaited.held is not None:
                # The bridge answered the original itself: the copy must not run it again.
                held = self._held.get(awaited.held.instance, [])
                if awaited.held in held:
                    held.remove(awaited.held)
                    logger.info("the MQTT bridge of %s answered %s itself", awaited.held.instance, awaited.held.topic)
        if awaited is None:
            return
        self._connection.unsubscribe(topic)
        if awaited.strategy is None:
            return
        instance, strategy = awaited.strategy
        if data.get("status") == protocol.STATUS_OK:
            self._record_strategy(instance, strategy)
        else:
            logger.info(
                "instance %s: its bridge refused the %s (%s): the recorded strategy stays as it was",
                instance,
                "start" if strategy else "stop",
                data.get("status"),
            )

    # -- the clock ---------------------------------------------------------------------------------

    def tick(self) -> None:
        """Publish held requests whose grace passed, answer those whose bridge never came up, forget old waits."""
        now = self._clock()
        due: list[Held] = []
        late: list[Held] = []
        with self._lock:
            for instance, items in list(self._held.items()):
                due += [i for i in items if i.forward_at is not None and i.forward_at <= now]
                late += [i for i in items if i.forward_at is None and i.deadline <= now]
                keep = [i for i in items if i not in due and i not in late]
                if keep:
                    self._held[instance] = keep
                else:
                    del self._held[instance]
            settled = {i.reply_to for i in due}
            old = [topic for topic, awaited in self._awaited.items() if awaited.until <= now]
            for topic in old:
                del self._awaited[topic]
            for topic, awaited in list(self._awaited.items()):
                if awaited.held is not None and awaited.held.reply_to in settled and awaited.strategy is None:
                    del self._awaited[topic]  # the copy goes out: its answer is the client's business
                    old.append(topic)
        for topic in old:
            self._connection.unsubscribe(topic)
        for item in due:
            self._forward(item)
        for item in late:
            self._expired(item)

    def next_due(self) -> float | None:
        """Return when (monotonic) :meth:`tick` has work next, or ``None``: nothing is held or awaited."""
        with self._lock:
            times = [i.forward_at if i.forward_at is not None else i.deadline for h in self._held.values() for i in h]
            times += [awaited.until for awaited in self._awaited.values()]
        return min(times, default=None)

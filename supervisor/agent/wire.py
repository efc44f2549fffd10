"""Answering requests on the wire: replies in Hummingbot's envelope, refusals, redeliveries.

Every reply the agent sends goes through :class:`Replier`: it never publishes where
an agent or a bot would take the reply as a command or a record, and refusals only
take outgoing-queue room that executed requests' replies do not need.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import typing as t

from supervisor.audit import clip
from supervisor.mqtt import protocol
from supervisor.mqtt.dedup import Redeliveries
from supervisor.mqtt.guard import is_command_topic

if t.TYPE_CHECKING:
    from collections.abc import Mapping

    from supervisor.mqtt.connection import Connection
    from supervisor.mqtt.guard import RefusalLog

__all__ = ["Replier"]

logger = logging.getLogger(__name__)


@functools.cache
def _envelope_parts() -> tuple[bytes, bytes]:
    # The envelope of {} at time 0, cut around the timestamp; data is its last member ({} then "}").
    empty = protocol.encode_reply({}, now_ms=0)
    head, _, tail = empty.partition(b'"timestamp":0,')
    return head + b'"timestamp":', b"," + tail[:-3]


def envelope(data: bytes) -> bytes:
    """Return :func:`protocol.encode_reply`'s envelope around ``data``, already encoded by :func:`protocol.dumps`."""
    head, tail = _envelope_parts()
    return head + str(time.time_ns() // 1_000_000).encode() + tail + data + b"}"


class Replier:
    """Replies, refusals and the redelivery check of one agent.

    Parameters
    ----------
    connection
        The broker connection replies go out on.
    namespace, own_prefix
        Hummingbot's namespace and ours: no reply is ever published on a command topic of either.
    refusals
        Where refusals are counted and logged.
    reserve
        Outgoing-queue slots that refusals leave free (for executed requests' replies).
    """

    def __init__(
        self, connection: Connection, namespace: str, own_prefix: str, refusals: RefusalLog, *, reserve: int
    ) -> None:
        self.connection = connection
        self.namespace = namespace
        self.own_prefix = own_prefix
        self.refusals = refusals
        self.reserve = reserve
        self.redeliveries = Redeliveries()

    def reply(
        self,
        reply_to: str,
        data: Mapping[str, t.Any],
        key: str | None = None,
        *,
        spare: bool = False,
        encoded: bytes | None = None,
    ) -> None:
        """Publish a reply; ``spare`` ones (refusals) only while the queue has room beyond executed requests'.

        ``encoded`` is ``data`` already encoded as :func:`protocol.encode_reply` encodes it (a status, once per look).
        """
        try:
            topic = protocol.reply_topic(reply_to)
        except protocol.ProtocolError as e:
            logger.warning("cannot answer on reply_to %s: %s", clip(reply_to, 80), e)
            return
        if self.is_command_topic(topic):
            return  # never publish where an agent or a bot would take it as a command or a record
        body = protocol.encode_reply(data) if encoded is None else envelope(encoded)
        if key is not None:
            self.redeliveries.answered(key, body)
        if not self.connection.publish(topic, body, qos=1, headroom=self.reserve if spare else 0):
            self.refusals.refuse("unanswered", topic, "outgoing queue is full; reply dropped")

    def is_command_topic(self, topic: str) -> bool:
        """Return whether ``topic`` is one an agent or a bot takes as a command or a record."""
        return is_command_topic(topic, self.namespace, self.own_prefix)

    def error_raw(
        self, payload: bytes, message: str, *, status: int = protocol.STATUS_ERROR, spare: bool = False
    ) -> None:
        """Answer ``message`` to a request known only by its bytes (if its reply_to can be read)."""
        try:
            request = protocol.parse_request(payload)
        except protocol.ProtocolError as e:
            if e.reply_to:
                self.reply(e.reply_to, {"status": status, "msg": message}, spare=spare)
            return
        self.reply(request.reply_to, {"status": status, "msg": message}, spare=spare)

    def refuse_retained(self, topic: str, payload: bytes) -> None:
        """Answer 400 to a request that came with the retain flag; it is never executed."""
        self.refusals.refuse("retained", topic, "request arrived with the retain flag", result=protocol.STATUS_ERROR)
        self.error_raw(
            payload,
            "bad request: it arrived retained (MQTT retain flag). Retained requests are never executed; "
            "publish requests without retain.",
            spare=True,
        )

    def fresh(self, topic: str, payload: bytes, dup: bool) -> tuple[protocol.Request, str] | None:
        """Return a new, well-formed request and its dedup key; ``None`` for redeliveries and bad requests.

        A redelivery (the DUP flag on a request already seen) is not run
        again; it gets the reply already sent, if any.
        """
        new, key, cached = self.redeliveries.check(topic, payload, dup=dup)
        if not new:
            # Counted with the refusals: a stranger repeating one request must not grow the logs line by line.
            self.refusals.refuse(
                "redelivered", topic, "a redelivery of a request already handled: not run again", result="ignored"
            )
            if cached is not None:
                with contextlib.suppress(protocol.ProtocolError):
                    again = protocol.parse_request(payload)
                    self.connection.publish(protocol.reply_topic(again.reply_to), cached, qos=1)
            return None
        request = self.parse(topic, payload)
        return None if request is None else (request, key)

    def parse(self, topic: str, payload: bytes) -> protocol.Request | None:
        """Parse a request; answer 400 where possible and return ``None`` when it is unusable."""
        try:
            request = protocol.parse_request(payload)
        except protocol.ProtocolError as e:
            self.refusals.refuse("malformed", topic, str(e), result=protocol.STATUS_ERROR)
            if e.reply_to:
                self.reply(e.reply_to, {"status": protocol.STATUS_ERROR, "msg": f"bad request: {e}"}, spare=True)
            return None
        if self.is_command_topic(protocol.reply_topic(request.reply_to)):
            # Nobody can be answered there: a reply would land as a command (or a record) of some agent or bot.
            self.refusals.refuse(
                "reply_to", topic, f"reply_to {request.reply_to!r} is a command topic", result=protocol.STATUS_ERROR
            )
            return None
        return request

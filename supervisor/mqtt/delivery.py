"""The wire between the webhook receiver and the agents: who sent an event, and its confirmation.

The receiver adds a ``receiver`` member (its journal's id) to the external events it
publishes; Hummingbot's bridge ignores unknown members, so plugin bots see the usual
``ExternalEventMessage``. An agent that typed or refused such an event confirms it on
``{own_prefix}/{host}/{instance}/delivery``, signed when a secret is set. Stdlib + auth only.
"""

from __future__ import annotations

import json
import math
import re
import time
import typing as t

from supervisor.mqtt.auth import is_signed_record, sign_record

RECEIVER = "receiver"
"""The payload member naming the receiver (its journal's id) of an event we publish."""
EXPIRES = "expires"
"""The payload member with the event's deadline (Unix milliseconds): never typed after it."""
TO = "to"
"""The payload member listing the ``HOST/INSTANCE`` targets an event is for."""
TYPED, REFUSED = "typed", "refused"
RECEIVER_ID_RE = re.compile(r"[0-9a-f]{8,64}")


def delivery_topic(own_prefix: str, host: str, instance: str) -> str:
    """Return where an agent confirms events for ``instance``."""
    return f"{own_prefix}/{host}/{instance}/delivery"


def delivery_filter(own_prefix: str) -> str:
    """Return the receiver's subscription to every agent's confirmations."""
    return f"{own_prefix}/+/+/delivery"


def sender_of(message: t.Mapping[str, t.Any]) -> tuple[str, int] | None:
    """Return ``(receiver id, sequence)`` of an event our receiver sent, ``None`` for anyone else's."""
    receiver, sequence = message.get(RECEIVER), message.get("sequence")
    if not isinstance(receiver, str) or not RECEIVER_ID_RE.fullmatch(receiver):
        return None
    if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 1:
        return None
    return receiver, sequence


def is_for(message: t.Mapping[str, t.Any], host: str, instance: str) -> bool:
    """Return whether an event is for ``host``'s ``instance`` (an event without ``to`` is for whoever hears it)."""
    to = message.get(TO)
    if not isinstance(to, list):
        return True
    return f"{host}/{instance}" in to


def is_expired(message: t.Mapping[str, t.Any], now: float) -> bool:
    """Return whether an event carries a deadline (ms) that ``now`` (s) is past."""
    expires = message.get(EXPIRES)
    if isinstance(expires, bool) or not isinstance(expires, (int, float)) or not math.isfinite(expires):
        return False
    return now * 1000 > expires


def confirmation(
    *, secret: str | None, topic: str, receiver: str, sequence: int, host: str, instance: str, result: str, msg: str
) -> bytes:
    """Return the confirmation an agent publishes on ``topic`` for one event."""
    record: dict[str, t.Any] = {
        RECEIVER: receiver,
        "sequence": sequence,
        "host": host,
        "instance": instance,
        "result": result,
        "msg": msg[:300],
        "ts": round(time.time(), 3),
    }
    if secret:
        record = sign_record(secret, topic, record)
    return json.dumps(record, separators=(",", ":")).encode()


class Confirmation(t.NamedTuple):
    """One agent's word on one event."""

    receiver: str
    sequence: int
    host: str
    instance: str
    result: str
    msg: str


def read_confirmation(topic: str, payload: bytes, secret: str | None) -> Confirmation | None:
    """Parse a confirmation; ``None`` when it is malformed, for another topic, or (with a secret) unsigned."""
    try:
        record = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    if secret and not is_signed_record(secret, topic, record):
        return None
    sender = sender_of(record)
    host, instance, result, msg = (record.get(k) for k in ("host", "instance", "result", "msg"))
    parts = topic.split("/")
    if sender is None or len(parts) < 4 or parts[-3:-1] != [host, instance] or result not in (TYPED, REFUSED):
        return None
    return Confirmation(sender[0], sender[1], str(host), str(instance), str(result), str(msg or ""))

"""Telling a transport-level redelivery from a new request that happens to have the same bytes.

Only MQTT itself says what is a redelivery: a message the broker sends again with
the DUP flag, of a request already seen. Every other message is a request, however
like an earlier one it is: Hummingbot runs two identical requests twice, and so do
we (start -> stop -> start from one hand-made client has the same bytes each time).
Imports nothing of the agent's; the clock is injectable.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import time
import typing as t

if t.TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["REMEMBER_SECONDS", "Redeliveries"]

#: How long a request is remembered for a DUP-flagged redelivery (brokers resend on reconnect).
REMEMBER_SECONDS = 300.0
MAX_REMEMBERED = 4096


class Redeliveries:
    """Remembers requests and their replies, so a redelivery is answered again but never run twice."""

    def __init__(self, remember: float = REMEMBER_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.remember = remember
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (last seen, reply bytes once answered)
        self._seen: collections.OrderedDict[str, tuple[float, bytes | None]] = collections.OrderedDict()

    @staticmethod
    def key(topic: str, payload: bytes) -> str:
        """Return the identity of a request: its topic and exact bytes."""
        return hashlib.sha256(topic.encode() + b"\0" + payload).hexdigest()

    def check(self, topic: str, payload: bytes, *, dup: bool = False) -> tuple[bool, str, bytes | None]:
        """Return ``(is_new, key, cached_reply)``; a new request is remembered from now on.

        Only a ``dup``-flagged message of a request remembered is a redelivery;
        ``cached_reply`` is the reply already sent for it (``None`` while the
        first delivery is still being worked on).
        """
        key = self.key(topic, payload)
        now = self._clock()
        with self._lock:
            while self._seen and now - next(iter(self._seen.values()))[0] > self.remember:
                self._seen.popitem(last=False)
            while len(self._seen) >= MAX_REMEMBERED:
                self._seen.popitem(last=False)
            seen = self._seen.get(key)
            if seen is not None and dup:
                return False, key, seen[1]
            self._seen.pop(key, None)
            self._seen[key] = (now, None)
        return True, key, None

    def answered(self, key: str, reply: bytes) -> None:
        """Record the reply sent for the request ``key`` (for its redeliveries)."""
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None:
                self._seen[key] = (seen[0], reply)

"""Telling a redelivered request from a new one that happens to have the same bytes.

A redelivery is a message the broker sends again with the MQTT DUP flag, or the
same topic and payload arriving again within a few seconds. A later identical
request (start -> stop -> start from one client, same bytes) is a new request.
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

__all__ = ["REDELIVERY_SECONDS", "Redeliveries"]

#: Identical requests closer than this are one request delivered twice.
REDELIVERY_SECONDS = 5.0
#: How long a request is remembered for a DUP-flagged redelivery (brokers resend on reconnect).
REMEMBER_SECONDS = 300.0
MAX_REMEMBERED = 4096


class Redeliveries:
    """Remembers requests and their replies, so a redelivery is answered again but never run twice."""

    def __init__(
        self,
        window: float = REDELIVERY_SECONDS,
        remember: float = REMEMBER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.remember = max(remember, window)
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (first seen, reply bytes once answered)
        self._seen: collections.OrderedDict[str, tuple[float, bytes | None]] = collections.OrderedDict()

    @staticmethod
    def key(topic: str, payload: bytes) -> str:
        """Return the identity of a request: its topic and exact bytes."""
        return hashlib.sha256(topic.encode() + b"\0" + payload).hexdigest()

    def check(self, topic: str, payload: bytes, *, dup: bool = False) -> tuple[bool, str, bytes | None]:
        """Return ``(is_new, key, cached_reply)``; a new request is remembered from now on.

        ``cached_reply`` is the reply already sent for a redelivery (``None``
        while the first delivery is still being worked on).
        """
        key = self.key(topic, payload)
        now = self._clock()
        with self._lock:
            while self._seen and now - next(iter(self._seen.values()))[0] > self.remember:
                self._seen.popitem(last=False)
            while len(self._seen) >= MAX_REMEMBERED:
                self._seen.popitem(last=False)
            seen = self._seen.get(key)
            if seen is not None and (dup or now - seen[0] <= self.window):
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

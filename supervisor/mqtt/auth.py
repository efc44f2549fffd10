"""Signed requests on our own namespace: HMAC-SHA256 over topic, reply topic, time, nonce and data.

A signed request carries ``header.auth = {"ts": <epoch seconds>, "nonce": <hex>, "sig": <hex>}``.
The signature covers, one per line: the topic the request was published on,
``header.reply_to``, ``ts``, ``nonce`` and the ``data`` object as canonical JSON
(sorted keys, no spaces, ASCII). Hummingbot's own topics cannot be signed:
existing clients know nothing of this header. Imports no paho.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import math
import re
import secrets
import threading
import time
import typing as t

from supervisor.errors import AuthError

if t.TYPE_CHECKING:
    from collections.abc import Callable, Mapping

_NONCE_RE = re.compile(r"[0-9a-f]{16,64}")
_SIG_RE = re.compile(r"[0-9a-f]{64}")


def canonical(topic: str, reply_to: str, ts: float, nonce: str, data: Mapping[str, t.Any]) -> bytes:
    """Return the bytes a signature covers."""
    body = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return f"{topic}\n{reply_to}\n{ts!r}\n{nonce}\n{body}".encode()


def sign(
    secret: str,
    topic: str,
    reply_to: str,
    data: Mapping[str, t.Any],
    *,
    ts: float | None = None,
    nonce: str | None = None,
) -> dict[str, t.Any]:
    """Return the ``header.auth`` member for a request."""
    ts = round(time.time() if ts is None else ts, 3)
    nonce = nonce or secrets.token_hex(16)
    digest = hmac.new(secret.encode(), canonical(topic, reply_to, ts, nonce, data), hashlib.sha256).hexdigest()
    return {"ts": ts, "nonce": nonce, "sig": digest}


class Verifier:
    """Check signatures, the clock-skew window and nonce reuse.

    Nonces are remembered for twice the skew window: any older request fails
    the time check anyway, so memory stays bounded by the request rate. They
    live in memory only; instead, requests signed before ``not_before`` (the
    agent's start) are refused, so nothing from an earlier run can be replayed.
    """

    def __init__(
        self,
        secret: str,
        *,
        skew: float = 30.0,
        clock: Callable[[], float] = time.time,
        not_before: float | None = None,
    ) -> None:
        self._key = secret.encode()
        self.skew = skew
        self._clock = clock
        self.not_before = not_before
        self._seen: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._lock = threading.Lock()

    def verify(self, topic: str, reply_to: str, header: Mapping[str, t.Any], data: Mapping[str, t.Any]) -> None:
        """Return if the request is signed, fresh and new; raise :class:`AuthError` otherwise."""
        auth = header.get("auth")
        if not isinstance(auth, dict):
            msg = "request is not signed. Configure the shared secret on the client (SUPERVISOR_SECRET)."
            raise AuthError(msg)
        ts, nonce, sig = auth.get("ts"), auth.get("nonce"), auth.get("sig")
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
            msg = "request signature is malformed: 'ts' must be a number of seconds."
            raise AuthError(msg)
        if not isinstance(nonce, str) or not _NONCE_RE.fullmatch(nonce):
            msg = "request signature is malformed: 'nonce' must be 16-64 lowercase hex digits."
            raise AuthError(msg)
        if not isinstance(sig, str) or not _SIG_RE.fullmatch(sig):
            msg = "request signature is malformed: 'sig' must be 64 lowercase hex digits."
            raise AuthError(msg)
        expected = hmac.new(self._key, canonical(topic, reply_to, ts, nonce, data), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, sig):
            msg = "request signature is wrong (tampered request or a different secret)."
            raise AuthError(msg)
        now = self._clock()
        if abs(now - ts) > self.skew:
            msg = f"request has expired: signed {now - ts:+.0f}s from now, outside the {self.skew:g}s window."
            raise AuthError(msg)
        if self.not_before is not None and ts < self.not_before:
            msg = (
                f"request was signed {self.not_before - ts:.1f}s before this agent started: "
                "a replay from an earlier run is refused. Send a new request."
            )
            raise AuthError(msg)
        with self._lock:
            self._forget(now)
            if nonce in self._seen:
                msg = "request was replayed: its nonce has been used already."
                raise AuthError(msg)
            self._seen[nonce] = now

    def _forget(self, now: float) -> None:
        horizon = now - 2 * self.skew
        while self._seen:
            nonce, seen = next(iter(self._seen.items()))
            if seen >= horizon:
                break
            self._seen.pop(nonce)


def sign_record(secret: str, topic: str, record: Mapping[str, t.Any]) -> dict[str, t.Any]:
    """Return ``record`` with an ``auth`` member signing it for ``topic`` (a retained record)."""
    body = {k: v for k, v in record.items() if k != "auth"}
    return {**body, "auth": sign(secret, topic, "", body)}


def is_signed_record(secret: str, topic: str, record: Mapping[str, t.Any]) -> bool:
    """Return whether ``record`` carries a valid signature for ``topic`` by ``secret``.

    Records are retained and read again and again, so there is no nonce or
    clock check: the record's own ``ts`` says how old it is.
    """
    auth = record.get("auth")
    if not isinstance(auth, dict):
        return False
    ts, nonce, sig = auth.get("ts"), auth.get("nonce"), auth.get("sig")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        return False
    if not isinstance(nonce, str) or not _NONCE_RE.match(nonce) or not isinstance(sig, str) or not _SIG_RE.match(sig):
        return False
    body = {k: v for k, v in record.items() if k != "auth"}
    try:
        expected = hmac.new(secret.encode(), canonical(topic, "", ts, nonce, body), hashlib.sha256).hexdigest()
    except (TypeError, ValueError):
        return False
    return hmac.compare_digest(expected, sig)

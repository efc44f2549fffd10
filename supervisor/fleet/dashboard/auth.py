"""Password hashes, login sessions and a login throttle for the dashboard (stdlib only).

A hash reads ``scrypt$N$r$p$SALT$KEY`` (base64 salt and key), or
``pbkdf2_sha256$ITERATIONS$SALT$KEY`` where OpenSSL lacks scrypt. Settings come
from ``$SUPERVISOR_HOME/dashboard.toml`` (``[dashboard]``) and the environment.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
import typing as t
from pathlib import Path

from supervisor.files import atomic_write
from supervisor.fleet.dashboard import DashboardError
from supervisor.fleet.dashboard.flapping import FLAP_RESTARTS, FLAP_SETTLE, FLAP_WINDOW
from supervisor.tomlfile import tomllib

if t.TYPE_CHECKING:
    from collections.abc import Callable, Mapping

logger = logging.getLogger(__name__)

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
PBKDF2_ITERATIONS = 600_000
KEY_BYTES = 32
SESSION_TTL = 12 * 3600.0
MAX_SESSIONS = 256
ENV_PASSWORD_HASH = "SUPERVISOR_DASHBOARD_PASSWORD_HASH"
_KEYS = (
    "password_hash",
    "session_ttl",
    "secure_cookie",
    "webhook_url",
    "flap_restarts",
    "flap_window",
    "flap_settle",
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def hash_password(password: str, *, salt: bytes | None = None, scheme: str | None = None) -> str:
    """Return a salted hash of ``password`` for ``password_hash``."""
    salt = salt or secrets.token_bytes(16)
    if scheme is None:
        scheme = "scrypt" if hasattr(hashlib, "scrypt") else "pbkdf2_sha256"
    if scheme == "scrypt":
        key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"
    if scheme == "pbkdf2_sha256":
        key = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, PBKDF2_ITERATIONS, KEY_BYTES)
        return f"pbkdf2_sha256${PBKDF2_ITERATIONS}${_b64(salt)}${_b64(key)}"
    msg = f"password scheme '{scheme}' is unknown. Use scrypt or pbkdf2_sha256."
    raise DashboardError(msg)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + 1024 * 1024, dklen=32)


def check_hash(encoded: str, source: str = "password_hash") -> str:
    """Return ``encoded`` if it is a hash this module can verify.

    Raises
    ------
    DashboardError
        Naming ``source``, for anything else (a plain password, a truncated hash).
    """
    parts = encoded.split("$")
    ok = False
    try:
        if parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = (int(x) for x in parts[1:4])
            ok = n > 1 and n & (n - 1) == 0 and n <= 2**20 and 0 < r <= 32 and 0 < p <= 16
            ok = ok and bool(_unb64(parts[4])) and len(_unb64(parts[5])) >= 16
        elif parts[0] == "pbkdf2_sha256" and len(parts) == 4:
            ok = 1000 <= int(parts[1]) <= 10_000_000 and bool(_unb64(parts[2])) and len(_unb64(parts[3])) >= 16
    except (ValueError, binascii.Error):
        ok = False
    if not ok:
        msg = (
            f"{source}: not a password hash this dashboard understands. "
            "Make one with 'supervisor dashboard passwd' (never put the password itself there)."
        )
        raise DashboardError(msg)
    return encoded


def verify_password(password: str, encoded: str) -> bool:
    """Return whether ``password`` matches ``encoded`` (constant-time compare; a bad hash never matches)."""
    try:
        check_hash(encoded)
    except DashboardError:
        return False
    parts = encoded.split("$")
    if parts[0] == "scrypt":
        n, r, p = (int(x) for x in parts[1:4])
        salt, expected = _unb64(parts[4]), _unb64(parts[5])
        actual = _scrypt(password, salt, n, r, p)[: len(expected)]
    else:
        salt, expected = _unb64(parts[2]), _unb64(parts[3])
        actual = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, int(parts[1]), len(expected))
    return hmac.compare_digest(actual, expected)


@dataclasses.dataclass(frozen=True)
class Session:
    """One logged-in browser: the cookie token, its CSRF token and when it ends."""

    token: str
    csrf: str
    expires: float


class Sessions:
    """Random session tokens with an absolute lifetime.

    With a ``path`` they are kept there (0600, written atomically) so a restart of
    the dashboard logs nobody out; the file holds each token's SHA-256, never the token.
    """

    def __init__(
        self,
        ttl: float = SESSION_TTL,
        *,
        clock: Callable[[], float] = time.time,
        limit: int = MAX_SESSIONS,
        path: Path | None = None,
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        self._limit = limit
        self._path = path
        self._lock = threading.Lock()
        self._sessions: dict[str, tuple[str, float]] = self._load()

    def create(self) -> Session:
        """Start a session; the oldest one is dropped beyond the limit."""
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(24), self._clock() + self.ttl)
        with self._lock:
            self._expire()
            while len(self._sessions) >= self._limit:
                oldest = min(self._sessions, key=lambda k: self._sessions[k][1])
                del self._sessions[oldest]
            self._sessions[_digest(session.token)] = (session.csrf, session.expires)
            self._save()
        return session

    def get(self, token: str | None) -> Session | None:
        """Return the live session of ``token``, or ``None`` (unknown or expired)."""
        if not token:
            return None
        with self._lock:
            self._expire()
            # Looked up by digest: the secret token itself is never compared byte by byte.
            found = self._sessions.get(_digest(token))
        return None if found is None else Session(token, *found)

    def revoke(self, token: str | None) -> None:
        """End a session (logout)."""
        with self._lock:
            if self._sessions.pop(_digest(token or ""), None) is not None:
                self._save()

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, (_, expires) in self._sessions.items() if expires <= now]:
            del self._sessions[key]

    def _load(self) -> dict[str, tuple[str, float]]:
        if self._path is None or not self._path.exists():
            return {}
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
            now = self._clock()
            return {
                str(k): (str(v[0]), float(v[1]))
                for k, v in data.items()
                if isinstance(v, list) and len(v) == 2 and float(v[1]) > now
            }
        except (OSError, ValueError, TypeError, AttributeError) as e:
            # Only logins are lost: everyone logs in again.
            logger.warning("dashboard sessions file '%s' is unreadable (%s); starting with none", self._path, e)
            return {}

    def _save(self) -> None:
        if self._path is None:
            return
        data = {k: [csrf, expires] for k, (csrf, expires) in self._sessions.items()}
        self._path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self._path, json.dumps(data), mode=0o600)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class LoginThrottle:
    """Refuse logins from an address after ``limit`` failures within ``window`` seconds."""

    def __init__(self, limit: int = 5, window: float = 60.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, list[float]] = {}

    def allowed(self, key: str) -> bool:
        """Return whether ``key`` may try again now."""
        with self._lock:
            recent = self._recent(key)
            return len(recent) < self.limit

    def attempt(self, key: str) -> bool:
        """Count one attempt of ``key`` as a failure *before* checking it, and return whether it may go on.

        Counting and checking happen under one lock, so parallel attempts can
        never pass the limit; a successful attempt then calls :meth:`succeeded`.
        """
        with self._lock:
            recent = self._recent(key)
            if len(recent) >= self.limit:
                return False
            recent.append(self._clock())
            return True

    def failed(self, key: str) -> None:
        """Count one failure of ``key``."""
        with self._lock:
            self._recent(key).append(self._clock())

    def succeeded(self, key: str) -> None:
        """Forget the failures of ``key``."""
        with self._lock:
            self._failures.pop(key, None)

    def _recent(self, key: str) -> list[float]:
        now = self._clock()
        recent = [when for when in self._failures.get(key, []) if now - when < self.window]
        self._failures[key] = recent
        if len(self._failures) > 10_000:  # many addresses: forget the idle ones
            for other in [k for k, v in self._failures.items() if not v]:
                del self._failures[other]
        return recent


@dataclasses.dataclass(frozen=True)
class DashboardSettings:
    """What ``dashboard.toml`` and the environment say."""

    password_hash: str | None = dataclasses.field(default=None, repr=False)
    session_ttl: float = SESSION_TTL
    secure_cookie: bool = False
    webhook_url: str | None = dataclasses.field(default=None, repr=False)
    """Where alerts are POSTed (Slack/Discord/Telegram-compatible JSON); its path is a secret."""
    flap_restarts: int = FLAP_RESTARTS
    """This many restarts within ``flap_window`` seconds make a bot flapping ..."""
    flap_window: float = FLAP_WINDOW
    flap_settle: float = FLAP_SETTLE
    """... until it has run this many seconds without another restart."""

    @property
    def login_required(self) -> bool:
        """Whether the page asks for a password."""
        return self.password_hash is not None


def load_settings(path: Path, env: Mapping[str, str]) -> DashboardSettings:
    """Read ``[dashboard]`` from ``path`` (if it exists); ``SUPERVISOR_DASHBOARD_PASSWORD_HASH`` wins.

    Raises
    ------
    DashboardError
        Naming the file and key, for bad TOML, unknown keys or a value that is not a hash.
    """
    values: dict[str, t.Any] = {}
    where = f"config file '{path}'"
    if path.exists():
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as e:
            msg = f"{where}: cannot be read ({e}). Fix it or remove it."
            raise DashboardError(msg) from e
        for section, body in data.items():
            if section != "dashboard" or not isinstance(body, dict):
                msg = f"{where}: unknown section '{section}'. Known sections: dashboard."
                raise DashboardError(msg)
            for key, value in body.items():
                if key not in _KEYS:
                    msg = f"{where}: unknown key 'dashboard.{key}'. Known keys: {', '.join(_KEYS)}."
                    raise DashboardError(msg)
                values[key] = value
    password_hash = values.get("password_hash")
    source = f"{where}: key 'dashboard.password_hash'"
    if env.get(ENV_PASSWORD_HASH):
        password_hash, source = env[ENV_PASSWORD_HASH], f"environment variable {ENV_PASSWORD_HASH}"
    if password_hash is not None:
        if not isinstance(password_hash, str):
            msg = f"{source}: must be a string."
            raise DashboardError(msg)
        check_hash(password_hash, source)
    ttl = values.get("session_ttl", SESSION_TTL)
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0:
        msg = f"{where}: key 'dashboard.session_ttl' must be a positive number of seconds, not {ttl!r}."
        raise DashboardError(msg)
    secure = values.get("secure_cookie", False)
    if not isinstance(secure, bool):
        msg = f"{where}: key 'dashboard.secure_cookie' must be true or false, not {secure!r}."
        raise DashboardError(msg)
    webhook = values.get("webhook_url")
    if webhook is not None:
        from supervisor.fleet.dashboard.alerts import check_webhook_url

        if not isinstance(webhook, str):
            msg = f"{where}: key 'dashboard.webhook_url' must be a string."
            raise DashboardError(msg)
        check_webhook_url(webhook, f"{where}: key 'dashboard.webhook_url'")
    flap = {}
    for key, default in (("flap_restarts", FLAP_RESTARTS), ("flap_window", FLAP_WINDOW), ("flap_settle", FLAP_SETTLE)):
        value = values.get(key, default)
        whole = key == "flap_restarts"
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or value <= 0:
            kind = "a positive whole number" if whole else "a positive number of seconds"
            msg = f"{where}: key 'dashboard.{key}' must be {kind}, not {value!r}."
            raise DashboardError(msg)
        flap[key] = value
    return DashboardSettings(
        password_hash=password_hash or None,
        session_ttl=float(ttl),
        secure_cookie=secure,
        webhook_url=webhook or None,
        flap_restarts=int(flap["flap_restarts"]),
        flap_window=float(flap["flap_window"]),
        flap_settle=float(flap["flap_settle"]),
    )


def write_password_hash(path: Path, encoded: str) -> None:
    """Set ``password_hash`` in ``path``, keeping its other keys; the file is private (0600)."""
    check_hash(encoded)
    values: dict[str, t.Any] = {}
    if path.exists():
        load_settings(path, {})  # refuse to rewrite a file we cannot read back
        current = tomllib.loads(path.read_text(encoding="utf-8")).get("dashboard", {})
        values = {k: current[k] for k in _KEYS if k in current and k != "password_hash"}
    lines = ["[dashboard]", f'password_hash = "{encoded}"']
    for key, value in values.items():
        rendered = ("true" if value else "false") if isinstance(value, bool) else repr(value)
        lines.append(f"{key} = {rendered}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "\n".join(lines) + "\n", mode=0o600)


def new_password() -> str:
    """Return a random login password for a dashboard that has none (shown once, then only its hash is kept)."""
    return secrets.token_urlsafe(18)

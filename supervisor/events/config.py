"""Webhook receiver settings: ``$SUPERVISOR_HOME/events.toml`` (``[receiver]`` and ``[routes.NAME]``).

Pure data and parsing; imports nothing above ``errors``. Every error names the file and key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import typing as t
from pathlib import Path

from supervisor.events import EventsError
from supervisor.tomlfile import load_toml

if t.TYPE_CHECKING:
    from collections.abc import Sequence

DEFAULT_LISTEN = "127.0.0.1:8090"
DEFAULT_MAX_BODY = 16 * 1024
DEFAULT_DEDUPE_WINDOW = 10.0
DEFAULT_RATE = 60.0
DEFAULT_BURST = 10
DEFAULT_MAX_AGE = 60.0
"""Seconds an event may take to reach its bot; later it expires (a stale trading signal is worse than none)."""
MIN_TOKEN = 16
TRADINGVIEW = "tradingview"
TRADINGVIEW_ADDRESSES = ("52.89.214.238", "34.212.75.30", "54.218.53.128", "52.32.178.7")
"""The addresses TradingView's help centre lists for its webhook requests (IPv4 only)."""

ROUTE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
EVENT_RE = re.compile(r"[A-Za-z0-9_-]+([./][A-Za-z0-9_-]+)*")
_ID = r"[A-Za-z0-9_*-]+"
TARGET_RE = re.compile(rf"({_ID}/)?{_ID}")

Network: t.TypeAlias = "ipaddress.IPv4Network | ipaddress.IPv6Network"
_RECEIVER_KEYS = ("listen", "max_body", "dedupe_window", "allow", "trusted_proxies")
_ROUTE_KEYS = ("token", "token_file", "event", "targets", "rate", "burst", "allow", "max_age")


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a route's events go: ``HOST/INSTANCE`` or a bare Hummingbot id, ``*`` allowed."""

    host: str | None
    instance: str

    @classmethod
    def parse(cls, text: str) -> Target:
        """Parse a selector (no validation beyond the split; see :func:`load_events_config`)."""
        host, sep, instance = text.rpartition("/")
        return cls(host if sep else None, instance)

    @property
    def is_pattern(self) -> bool:
        """Whether the selector needs the fleet view to become instance ids."""
        return "*" in self.instance or (self.host is not None and "*" in self.host)

    def __str__(self) -> str:
        return f"{self.host}/{self.instance}" if self.host is not None else self.instance


@dataclasses.dataclass(frozen=True)
class Route:
    """One ``POST /hooks/{name}`` endpoint. ``token`` is left out of ``repr()``."""

    name: str
    token: str = dataclasses.field(repr=False)
    event: str
    targets: tuple[Target, ...]
    rate: float = DEFAULT_RATE
    burst: int = DEFAULT_BURST
    allow: tuple[Network, ...] = ()
    max_age: float = DEFAULT_MAX_AGE


@dataclasses.dataclass(frozen=True)
class EventsConfig:
    """The receiver's settings and routes."""

    listen: str = DEFAULT_LISTEN
    max_body: int = DEFAULT_MAX_BODY
    dedupe_window: float = DEFAULT_DEDUPE_WINDOW
    allow: tuple[Network, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()
    routes: t.Mapping[str, Route] = dataclasses.field(default_factory=dict)


def event_topic_suffix(event: str) -> str:
    """Return the topic levels of an event name: Hummingbot turns each ``/`` back into ``.``."""
    return event.replace(".", "/")


def parse_networks(values: Sequence[object], where: str) -> tuple[Network, ...]:
    """Parse addresses and CIDR blocks; ``tradingview`` stands for TradingView's published addresses.

    Raises
    ------
    EventsError
        Naming ``where``, for anything that is not an address or block.
    """
    networks: list[Network] = []
    for value in values:
        if value == TRADINGVIEW:
            networks.extend(ipaddress.ip_network(a) for a in TRADINGVIEW_ADDRESSES)
            continue
        try:
            networks.append(ipaddress.ip_network(str(value), strict=False))
        except ValueError as e:
            msg = f"{where}: '{value}' is not an IP address or CIDR block ({e}). Example: 203.0.113.7, 10.0.0.0/8."
            raise EventsError(msg) from e
    return tuple(networks)


def is_allowed(address: str, networks: Sequence[Network]) -> bool:
    """Return whether ``address`` lies in one of ``networks`` (an empty list allows everyone)."""
    if not networks:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)


def _number(value: object, where: str, *, minimum: float, integer: bool = False) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or t.cast("float", value) < minimum:
        kind = "a whole number" if integer else "a number"
        msg = f"{where}: must be {kind} of at least {minimum:g}, not {value!r}."
        raise EventsError(msg)
    return float(t.cast("float", value))


def _strings(value: object, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        msg = f"{where}: must be a list of strings."
        raise EventsError(msg)
    return list(value)


def _route(name: str, body: object, where: str, base: Path) -> Route:
    if not ROUTE_RE.fullmatch(name):
        msg = f"{where}: route name '{name}' is not valid. Use 1-64 letters, digits, '-' and '_'."
        raise EventsError(msg)
    if not isinstance(body, dict):
        msg = f"{where}: [routes.{name}] must be a table."
        raise EventsError(msg)
    for key in body:
        if key not in _ROUTE_KEYS:
            msg = f"{where}: unknown key 'routes.{name}.{key}'. Known keys: {', '.join(_ROUTE_KEYS)}."
            raise EventsError(msg)
    key = f"{where}: key 'routes.{name}"
    token = body.get("token")
    if "token_file" in body:
        if token is not None:
            msg = f"{key}.token_file': set either 'token' or 'token_file', not both."
            raise EventsError(msg)
        path = (base / Path(str(body["token_file"])).expanduser()).resolve()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as e:
            msg = f"{key}.token_file': cannot read '{path}' ({e.strerror}). Check the path and its permissions."
            raise EventsError(msg) from e
    if not isinstance(token, str) or len(token) < MIN_TOKEN or not token.isprintable() or " " in token:
        msg = (
            f"{key}.token': needs a secret of at least {MIN_TOKEN} printable characters without spaces. "
            "Make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(24))'."
        )
        raise EventsError(msg)
    event = body.get("event")
    if not isinstance(event, str) or not EVENT_RE.fullmatch(event):
        msg = (
            f"{key}.event': '{event}' is not an event name. Use letters, digits, '-' and '_' "
            "in parts joined by '.' (the bot sees signals/btc/long as signals.btc.long)."
        )
        raise EventsError(msg)
    targets = []
    for text in _strings(body.get("targets", []), f"{key}.targets'"):
        if not TARGET_RE.fullmatch(text):
            msg = (
                f"{key}.targets': target '{text}' is not HOST/INSTANCE or an instance id. "
                "Examples: host-1/mm-1, mm-1, host-1/*, */mm-*."
            )
            raise EventsError(msg)
        targets.append(Target.parse(text))
    if not targets:
        msg = f"{key}.targets': name at least one target (HOST/INSTANCE or an instance id)."
        raise EventsError(msg)
    return Route(
        name=name,
        token=token,
        event=event.replace("/", "."),
        targets=tuple(dict.fromkeys(targets)),
        rate=_number(body.get("rate", DEFAULT_RATE), f"{key}.rate'", minimum=0.001),
        burst=int(_number(body.get("burst", DEFAULT_BURST), f"{key}.burst'", minimum=1, integer=True)),
        allow=parse_networks(_strings(body.get("allow", []), f"{key}.allow'"), f"{key}.allow'"),
        max_age=_number(body.get("max_age", DEFAULT_MAX_AGE), f"{key}.max_age'", minimum=0.1),
    )


def load_events_config(path: Path) -> EventsConfig:
    """Read the receiver's TOML file.

    Raises
    ------
    EventsError
        Naming the file and key that is missing, unknown or invalid.
    """
    where = f"config file '{path}'"
    data = load_toml(path, EventsError, missing="Create it with at least one [routes.NAME] table (see the README).")
    for section in data:
        if section not in ("receiver", "routes"):
            msg = f"{where}: unknown section '{section}'. Known sections: receiver, routes."
            raise EventsError(msg)
    receiver = data.get("receiver", {})
    routes_raw = data.get("routes", {})
    if not isinstance(receiver, dict) or not isinstance(routes_raw, dict):
        msg = f"{where}: [receiver] and [routes.NAME] must be tables."
        raise EventsError(msg)
    for key in receiver:
        if key not in _RECEIVER_KEYS:
            msg = f"{where}: unknown key 'receiver.{key}'. Known keys: {', '.join(_RECEIVER_KEYS)}."
            raise EventsError(msg)
    listen = receiver.get("listen", DEFAULT_LISTEN)
    if not isinstance(listen, str):
        msg = f"{where}: key 'receiver.listen' must be HOST:PORT, not {listen!r}."
        raise EventsError(msg)
    routes = {name: _route(name, body, where, path.parent) for name, body in routes_raw.items()}
    if not routes:
        msg = f"{where}: no routes. Add a [routes.NAME] table with token, event and targets."
        raise EventsError(msg)
    return EventsConfig(
        listen=listen,
        max_body=int(
            _number(receiver.get("max_body", DEFAULT_MAX_BODY), f"{where}: key 'receiver.max_body'", minimum=1)
        ),
        dedupe_window=_number(
            receiver.get("dedupe_window", DEFAULT_DEDUPE_WINDOW), f"{where}: key 'receiver.dedupe_window'", minimum=0
        ),
        allow=parse_networks(_strings(receiver.get("allow", []), "receiver.allow"), f"{where}: key 'receiver.allow'"),
        trusted_proxies=parse_networks(
            _strings(receiver.get("trusted_proxies", []), "receiver.trusted_proxies"),
            f"{where}: key 'receiver.trusted_proxies'",
        ),
        routes=routes,
    )

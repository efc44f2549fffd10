"""Agent settings: broker URLs, TOML file, ``SUPERVISOR_*`` variables, CLI overrides.

Pure data and parsing; imports neither paho nor anything above ``errors``.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import typing as t
import urllib.parse
from pathlib import Path

from supervisor.errors import AgentError
from supervisor.tomlfile import load_toml

if t.TYPE_CHECKING:
    from collections.abc import Mapping

Protocol = t.Literal["3.1.1", "5"]

DEFAULT_BROKER_URL = "mqtt://localhost:1883"
_PORTS = {"mqtt": 1883, "mqtts": 8883}
_URL_HINT = "Use mqtt://host:port or mqtts://host:port."
_ID_RE = re.compile(r"[A-Za-z0-9_-]+")
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")


@dataclasses.dataclass
class BrokerConfig:
    """Where and how the agent connects to its MQTT broker.

    ``password`` is left out of ``repr()`` so a logged config never shows it.
    ``insecure`` skips the host-name check of the broker certificate (the chain is
    still verified), like ``mosquitto_sub --insecure``.
    """

    host: str
    port: int = 1883
    tls: bool = False
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False
    protocol: Protocol = "3.1.1"
    keepalive: int = 30
    client_id: str | None = None

    @property
    def url(self) -> str:
        """Return ``mqtt[s]://host:port``, never with credentials, for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def default_host_id() -> str:
    """Return this machine's short host name reduced to ``[a-z0-9_-]``."""
    short = socket.gethostname().split(".", 1)[0].lower()
    return re.sub(r"[^a-z0-9_-]+", "-", short).strip("-") or "host"


@dataclasses.dataclass
class AgentConfig:
    """Everything the agent needs: broker, topic names, timers and secret."""

    broker: BrokerConfig
    namespace: str = "hbot"
    own_prefix: str = "supervisor"
    host_id: str = dataclasses.field(default_factory=default_host_id)
    heartbeat_interval: float = 10.0
    state_interval: float = 30.0
    secret: str | None = dataclasses.field(default=None, repr=False)
    clock_skew: float = 30.0
    embedded_broker: bool = False


def redact(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, for logs and errors."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = len(rest)
    for stop in "/?#":
        index = rest.find(stop)
        if index != -1:
            end = min(end, index)
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, hostport = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{hostport}{tail}"


def parse_broker_url(url: str) -> BrokerConfig:
    """Parse ``mqtt://[user[:password]@]host[:port]`` or ``mqtts://...``.

    User name and password are percent-decoded; IPv6 hosts are written ``[::1]``.

    Raises
    ------
    AgentError
        For another scheme, a missing host, a bad port, or a path or query.
    """
    shown = redact(url)

    def fail(what: str) -> AgentError:
        msg = f"broker URL '{shown}': {what}. {_URL_HINT}"
        return AgentError(msg)

    if not url or url != url.strip():
        what = "empty or surrounded by spaces"
        raise fail(what)
    parts = urllib.parse.urlsplit(url)
    if "://" not in url or parts.scheme not in _PORTS:
        raise fail(f"unsupported scheme '{parts.scheme}'" if "://" in url else "no scheme")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        what = "a path, query or fragment is not allowed"
        raise fail(what)
    bad_port = "the port must be a number from 1 to 65535"
    try:
        port = parts.port
    except ValueError as exc:
        raise fail(bad_port) from exc
    if port == 0:
        raise fail(bad_port)
    host = parts.hostname
    if not host or any(c.isspace() or c in "/\\" for c in host):
        what = "no valid host name"
        raise fail(what)
    username = urllib.parse.unquote(parts.username) if parts.username is not None else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    return BrokerConfig(
        host=host,
        port=port or _PORTS[parts.scheme],
        tls=parts.scheme == "mqtts",
        username=username or None,
        password=password,
    )


def validate_host_id(value: str, source: str | None = None) -> str:
    """Return ``value`` if it is a portable id (``[A-Za-z0-9_-]+``).

    Raises
    ------
    AgentError
        Naming ``source``, for any other character (dots are not portable).
    """
    if not _ID_RE.fullmatch(value):
        msg = (
            f"{source + ': ' if source else ''}host id '{value}' is not valid. "
            "Use letters, digits, '-' and '_' only "
            "(dots, '/', '+' and '#' change the MQTT topic)."
        )
        raise AgentError(msg)
    return value


def validate_namespace(value: str, source: str | None = None, what: str = "namespace") -> str:
    """Return ``value`` if it is ``[A-Za-z0-9_-]+`` parts joined by ``/``.

    Raises
    ------
    AgentError
        Naming ``source``, for any other form.
    """
    if not _NAMESPACE_RE.fullmatch(value):
        msg = (
            f"{source + ': ' if source else ''}{what} '{value}' is not valid. "
            "Use letters, digits, '-' and '_', "
            "optionally in parts joined by '/' (no dots, no leading or trailing '/')."
        )
        raise AgentError(msg)
    return value


# --- layered loading ------------------------------------------------------------

# TOML section -> keys it may hold; every key is also a valid ``overrides`` name.
_FILE_KEYS: dict[str, tuple[str, ...]] = {
    "broker": (
        "url",
        "username",
        "password",
        "password_file",
        "ca",
        "cert",
        "key",
        "insecure",
        "protocol",
        "keepalive",
        "client_id",
    ),
    "agent": (
        "namespace",
        "own_prefix",
        "host_id",
        "heartbeat_interval",
        "state_interval",
        "secret",
        "secret_file",
        "clock_skew",
        "embedded_broker",
    ),
}
_ALL_KEYS = frozenset(key for keys in _FILE_KEYS.values() for key in keys)
_ENV_KEYS = {
    "SUPERVISOR_BROKER": "url",
    "SUPERVISOR_BROKER_USERNAME": "username",
    "SUPERVISOR_BROKER_PASSWORD": "password",
    "SUPERVISOR_NAMESPACE": "namespace",
    "SUPERVISOR_HOST_ID": "host_id",
    "SUPERVISOR_SECRET": "secret",
    "SUPERVISOR_CA": "ca",
    "SUPERVISOR_CERT": "cert",
    "SUPERVISOR_KEY": "key",
}
# ``--broker`` reads SUPERVISOR_BROKER through click's auto_envvar_prefix.
_OVERRIDE_ALIASES = {"broker": "url"}
_PATH_KEYS = frozenset({"ca", "cert", "key", "password_file", "secret_file"})
_FILE, _ENV, _CLI = 0, 1, 2


class _Setting(t.NamedTuple):
    value: t.Any
    layer: int
    source: str  # "config file 'x': key 'broker.ca'" style, for error messages


def _read_toml(path: Path) -> dict[str, _Setting]:
    where = f"config file '{path}'"
    data = load_toml(path, AgentError, missing="Create it or pass another path with --config.")
    settings: dict[str, _Setting] = {}
    for section, body in data.items():
        if section not in _FILE_KEYS or not isinstance(body, dict):
            known = ", ".join(_FILE_KEYS)
            msg = f"{where}: unknown section '{section}'. Known sections: {known}."
            raise AgentError(msg)
        for key, value in body.items():
            if key not in _FILE_KEYS[section]:
                known = ", ".join(_FILE_KEYS[section])
                msg = f"{where}: unknown key '{section}.{key}'. Known keys in [{section}]: {known}."
                raise AgentError(msg)
            if key in _PATH_KEYS and isinstance(value, str):
                # Relative paths are relative to the file, not the working directory.
                value = str((path.parent / Path(value).expanduser()).resolve())
            settings[key] = _Setting(value, _FILE, f"{where}: key '{section}.{key}'")
    return settings


def _expand_files(settings: dict[str, _Setting], layer_settings: dict[str, _Setting]) -> None:
    """Read one layer's ``password_file``/``secret_file`` into that layer's values."""
    for file_key, key in (("password_file", "password"), ("secret_file", "secret")):
        if file_key not in layer_settings:
            continue
        entry = layer_settings[file_key]
        if key in layer_settings:
            msg = f"{entry.source}: set either '{key}' or '{file_key}', not both."
            raise AgentError(msg)
        path = Path(str(entry.value)).expanduser()
        try:
            text = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            msg = f"{entry.source}: cannot read '{path}' ({exc.strerror}). Check the path and its permissions."
            raise AgentError(msg) from exc
        settings[key] = _Setting(text, entry.layer, entry.source)


def _as_type(entry: _Setting, kind: type, what: str) -> t.Any:
    value = entry.value
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {
            "1",
            "true",
            "yes",
            "0",
            "false",
            "no",
        }:
            return value.lower() in {"1", "true", "yes"}
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
    elif kind is Path and isinstance(value, (str, Path)):
        return Path(value).expanduser()
    msg = f"{entry.source}: must be {what}, not {value!r}."
    raise AgentError(msg)


def _pick(settings: dict[str, _Setting], key: str, kind: type, what: str, default: t.Any) -> t.Any:
    entry = settings.get(key)
    return default if entry is None else _as_type(entry, kind, what)


def _credential(settings: dict[str, _Setting], key: str, from_url: str | None, url_layer: int) -> str | None:
    """Pick a user name or password: one embedded in a URL counts at the URL's layer.

    An explicit setting in the URL's layer or above beats the URL; one from a lower
    layer applies only when the winning URL embeds none.
    """
    entry = settings.get(key)
    if entry is not None and (from_url is None or entry.layer >= url_layer):
        return t.cast("str", _as_type(entry, str, "a string"))
    return from_url


def find_agent_config(given: Path | None, default: Path) -> Path | None:
    """Return the agent TOML to read: the file ``given`` (``--config``), else ``default`` if it exists, else none.

    Every front end (agent, fleet, dashboard, events receiver) resolves the file here, so a
    missing ``--config`` file is an error while a missing default ``agent.toml`` is not.
    """
    if given is not None:
        return given
    return default if default.exists() else None


def load_agent_config(path: Path | None, env: Mapping[str, str], overrides: Mapping[str, t.Any]) -> AgentConfig:
    """Build the agent's settings: overrides > env > TOML file > defaults.

    Parameters
    ----------
    path
        A TOML file with ``[broker]`` and ``[agent]`` sections, or ``None`` for none.
    env
        Usually ``os.environ``; the ``SUPERVISOR_*`` variables of ``_ENV_KEYS``.
        Empty values count as unset.
    overrides
        Command-line values keyed like the TOML keys (``url``, ``password_file``,
        ``host_id``, ...). ``None`` values count as unset.

    Raises
    ------
    AgentError
        Naming the file and key, variable or option that is unknown or invalid.
    """
    settings: dict[str, _Setting] = {}
    layers: list[dict[str, _Setting]] = []
    if path is not None:
        layers.append(_read_toml(path))
    env_layer = {
        key: _Setting(env[name], _ENV, f"environment variable {name}")
        for name, key in _ENV_KEYS.items()
        if env.get(name)
    }
    layers.append(env_layer)
    cli_layer: dict[str, _Setting] = {}
    for name, value in overrides.items():
        key = _OVERRIDE_ALIASES.get(name, name)
        if key not in _ALL_KEYS:
            known = ", ".join(sorted(_ALL_KEYS))
            msg = f"override '{key}' is not a known setting. Known settings: {known}."
            raise AgentError(msg)
        if value is not None:
            cli_layer[key] = _Setting(value, _CLI, f"option --{name.replace('_', '-')}")
    layers.append(cli_layer)
    for layer in layers:
        settings.update(layer)
        _expand_files(settings, layer)

    url_entry = settings.get("url") or _Setting(DEFAULT_BROKER_URL, -1, "default broker URL")
    url = t.cast("str", _as_type(url_entry, str, "a broker URL"))
    try:
        broker = parse_broker_url(url)
    except AgentError as exc:
        msg = f"{url_entry.source}: {exc}"
        raise AgentError(msg) from exc
    broker.username = _credential(settings, "username", broker.username, url_entry.layer)
    broker.password = _credential(settings, "password", broker.password, url_entry.layer)
    broker.ca = _pick(settings, "ca", Path, "a file path", None)
    broker.cert = _pick(settings, "cert", Path, "a file path", None)
    broker.key = _pick(settings, "key", Path, "a file path", None)
    broker.insecure = _pick(settings, "insecure", bool, "true or false", False)
    broker.keepalive = _pick(settings, "keepalive", int, "a whole number of seconds", 30)
    broker.client_id = _pick(settings, "client_id", str, "a string", None)
    protocol = str(settings["protocol"].value) if "protocol" in settings else "3.1.1"
    if protocol not in ("3.1.1", "5"):
        msg = f'{settings["protocol"].source}: must be "3.1.1" or "5", not {protocol!r}.'
        raise AgentError(msg)
    broker.protocol = t.cast("Protocol", protocol)
    if broker.keepalive < 5:
        where = settings["keepalive"].source
        msg = f"{where}: must be at least 5 seconds, not {broker.keepalive}."
        raise AgentError(msg)

    config = AgentConfig(broker=broker)
    for key in ("namespace", "own_prefix"):
        if key in settings:
            value = _as_type(settings[key], str, "a string")
            what = key.replace("_", " ")
            setattr(config, key, validate_namespace(value.rstrip("/"), settings[key].source, what))
    if "host_id" in settings:
        config.host_id = validate_host_id(_as_type(settings["host_id"], str, "a string"), settings["host_id"].source)
    for key in ("heartbeat_interval", "state_interval", "clock_skew"):
        if key in settings:
            number = _as_type(settings[key], float, "a number of seconds")
            if number <= 0:
                where = settings[key].source
                msg = f"{where}: must be a positive number of seconds, not {number}."
                raise AgentError(msg)
            setattr(config, key, number)
    config.secret = _pick(settings, "secret", str, "a string", None) or None
    config.embedded_broker = _pick(settings, "embedded_broker", bool, "true or false", False)
    return config

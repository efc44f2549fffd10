"""Hummingbot's MQTT wire format (commlib 0.11 envelope) as pure functions.

Owns serialisation, request parsing, command schemas and our own verbs. Imports
no ``paho`` and does no I/O; see ``hbot-mqtt-protocol.md`` for the contract.

Timestamps: commlib 0.11 stamps replies and heartbeats 0.5 s in the future.
We stamp the current time (as Hummingbot's aiomqtt bridge does for replies):
no client reads these values (commlib and hbotrc take only ``data``,
hummingbot-api uses its own receive time), and an honest clock is easier to
debug. The byte layout is the same either way.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import sys
import time
import typing as t
from collections.abc import Mapping

from supervisor.consoletext import check_console_text
from supervisor.errors import AgentError, UnsafeConsoleText

__all__ = [
    "CONSOLE_COMMANDS",
    "CONSOLE_FIELDS",
    "HBOT_COMMANDS",
    "HOST_VERBS",
    "MAX_REPLY_TO_CHARS",
    "MAX_REQUEST_BYTES",
    "MAX_SEND_CHARS",
    "OWN_VERBS",
    "STATUS_ERROR",
    "STATUS_OK",
    "STATUS_UNAUTHORIZED",
    "STRATEGY_FIELDS",
    "ProtocolError",
    "Request",
    "console_key",
    "dumps",
    "encode_reply",
    "encode_request",
    "heartbeat",
    "instances_generation",
    "load_record",
    "make_primitive",
    "notify",
    "parse_request",
    "reply_topic",
    "response",
    "status_update",
    "validate",
    "validate_own",
]

#: Topic suffixes of the bot's RPC commands, after ``{ns}/{id}/``.
HBOT_COMMANDS: tuple[str, ...] = (
    "start",
    "stop",
    "config",
    "import",
    "status",
    "history",
    "balance/limit",
    "balance/paper",
    "command_shortcuts",
)
STATUS_OK = 200
STATUS_ERROR = 400
#: Our extension: the request's signature is missing or wrong (the bot has no auth).
STATUS_UNAUTHORIZED = 401

#: Verbs under ``supervisor/{host}/{instance}/``.
OWN_VERBS: tuple[str, ...] = ("start", "stop", "restart", "status", "tail", "send", "logs")
#: Verbs under ``supervisor/{host}/``.
HOST_VERBS: tuple[str, ...] = ("list",)

MAX_REQUEST_BYTES = 64 * 1024
MAX_REPLY_TO_CHARS = 256
MAX_SEND_CHARS = 4096
TAIL_LINES_DEFAULT = 50
TAIL_LINES_MAX = 1000
STOP_TIMEOUT_MAX = 600.0

_HEADER_TAIL = {"content_type": "json", "encoding": "utf8", "agent": "commlib"}
# ujson writes exponents without zero padding ("1e-7"); Python's repr pads ("1e-07").
_EXPONENT = re.compile(r"e([+-])0*(\d)")
# ujson leaves DEL raw; json.dumps escapes it. Matching "\\\\" first keeps escaped
# backslashes paired, so a literal "\u007f" text is never touched.
_DEL_ESCAPE = re.compile(r"\\\\|\\u007f")
_KNOWN_COMMANDS = ", ".join(HBOT_COMMANDS)
_TRUE_WORDS = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE_WORDS = frozenset({"0", "off", "f", "false", "n", "no"})
_INT_TEXT = re.compile(r"[+-]?\d+(?:\.0*)?")


class ProtocolError(AgentError):
    """A request is malformed or breaks a command's schema.

    ``reply_to`` is the request's reply topic when it could be read, so the
    agent can answer 400; ``None`` means nobody can be answered.
    """

    code = "bad_request"

    def __init__(self, message: str, *, reply_to: str | None = None) -> None:
        super().__init__(message)
        self.reply_to = reply_to


@dataclasses.dataclass(frozen=True)
class Request:
    """One parsed RPC request: its reply topic (as sent), header and data."""

    reply_to: str
    header: dict[str, t.Any]
    data: dict[str, t.Any]


# --------------------------------------------------------------------------- json


def make_primitive(value: t.Any) -> t.Any:
    """Return ``value`` reduced to JSON primitives by commlib's (<= 0.13.1) rules.

    Dicts and lists recurse, tuples become lists, ``Decimal`` and ``float``
    become floats, ``None`` and bools stay, an int stays a number only if
    ``str(value).isdigit()`` (so ``-1`` becomes ``"-1"``), and anything else
    becomes ``str(value)``.
    """
    if isinstance(value, dict):
        return {key: make_primitive(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [make_primitive(item) for item in value]
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float) or _is_decimal(value):
        return float(value)
    if isinstance(value, int):
        return int(value) if str(value).isdigit() else str(value)
    return str(value)


def load_record(payload: bytes) -> dict[str, t.Any] | None:
    """Return a JSON object payload (a retained record, a reply) as a dict.

    ``None`` for an empty (cleared), non-JSON or non-object payload. Records come from anyone on
    the broker: ``NaN``, ``Infinity``, a number out of a float's range and an integer of more than
    :data:`_RECORD_INT_DIGITS` digits are read as ``null``, so no reader meets a number it cannot
    compute with or write back as JSON.
    """
    if not payload:
        return None
    try:
        value = json.loads(payload, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except (ValueError, RecursionError):  # RecursionError: a deeply nested payload
        return None
    return value if isinstance(value, dict) else None


_RECORD_INT_DIGITS = 20
"""Digits an integer in a record may have (a pid, bytes of memory, a time in nanoseconds fit)."""


def _no_constant(_name: str) -> None:
    return None


def _finite_float(text: str) -> float | None:
    number = float(text)
    return number if math.isfinite(number) else None


def _bounded_int(text: str) -> int | None:
    return int(text) if len(text.lstrip("-")) <= _RECORD_INT_DIGITS else None


def instances_generation(names: t.Iterable[str]) -> str:
    """Return the ``generation`` an agent's availability record gives for its set of instance ``names``.

    A digest of the sorted names: it changes whenever the set changes, and a reader that holds
    the same names computes the same value, so it knows its view of that host is complete.
    """
    import hashlib

    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]


def _is_decimal(value: t.Any) -> bool:
    # A Decimal exists only once its module is loaded; not importing it here saves every CLI run ~1 ms.
    module = sys.modules.get("decimal")
    return module is not None and isinstance(value, module.Decimal)


def dumps(obj: t.Any) -> bytes:
    r"""Serialise ``obj`` byte-for-byte as ujson does with its defaults.

    Compact, keys in insertion order, ASCII only, ``/`` written as ``\/``.
    Only dicts, lists, tuples, str, int, float, bool and ``None`` are accepted.

    Raises
    ------
    TypeError
        On any other type, or a dict key that is not a str.
    ValueError
        On NaN or infinity (not JSON).
    """
    parts: list[str] = []
    _encode(obj, parts)
    return "".join(parts).encode("ascii")


def _encode(value: t.Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_encode_str(value))
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        if not math.isfinite(value):
            msg = f"{value!r} cannot be written as JSON"
            raise ValueError(msg)
        out.append(_EXPONENT.sub(r"e\1\2", float.__repr__(value)))
    elif isinstance(value, dict):
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            if not isinstance(key, str):
                msg = f"JSON object keys must be str, not {type(key).__name__}"
                raise TypeError(msg)
            if index:
                out.append(",")
            out.append(_encode_str(key))
            out.append(":")
            _encode(item, out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        msg = f"{type(value).__name__} is not JSON serialisable; use make_primitive()"
        raise TypeError(msg)


def _encode_str(text: str) -> str:
    # json.dumps never escapes "/", so every "/" in its output is a raw one.
    quoted = json.dumps(text, ensure_ascii=True).replace("/", "\\/")
    if "\\u007f" in quoted:
        quoted = _DEL_ESCAPE.sub(lambda m: "\x7f" if m.group() == "\\u007f" else m.group(), quoted)
    return quoted


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------------- envelope


def _check_reply_to(reply_to: object) -> str:
    """Return ``reply_to`` if a reply can be published on it, else raise."""
    if not isinstance(reply_to, str) or not reply_to:
        msg = "header.reply_to must be a non-empty string naming the reply topic"
        raise ProtocolError(msg)
    if len(reply_to) > MAX_REPLY_TO_CHARS:
        msg = f"header.reply_to is {len(reply_to)} characters; the limit is {MAX_REPLY_TO_CHARS}"
        raise ProtocolError(msg)
    bad = sorted({char for char in reply_to if char in "+#\x00"})
    if bad:
        msg = (
            f"header.reply_to {reply_to[:64]!r} contains {', '.join(map(repr, bad))}; "
            "a reply topic cannot hold wildcards or NUL"
        )
        raise ProtocolError(msg)
    if reply_to.startswith("$"):
        msg = f"header.reply_to {reply_to[:64]!r} starts with '$', which brokers reserve"
        raise ProtocolError(msg)
    return reply_to


def reply_topic(reply_to: str) -> str:
    """Return the topic a reply to ``reply_to`` is published on: ``reply_to`` itself.

    Hummingbot 2.16's bridge publishes on ``reply_to`` as it is, so ``r.dot`` is
    answered on ``r.dot``. (commlib's transport, 0.11 and 0.13 alike, turns every
    ``.`` into ``/`` when it publishes or subscribes, which the bots built on it,
    Hummingbot up to v2.14, did too; commlib clients name their reply topics
    ``rpc-<hex>``, with no dot, so they are answered either way.)

    Raises
    ------
    ProtocolError
        If ``reply_to`` is empty, longer than 256 characters, starts with
        ``$`` or contains ``+``, ``#`` or NUL.
    """
    return _check_reply_to(reply_to)


def parse_request(payload: bytes | bytearray | memoryview, *, max_bytes: int = MAX_REQUEST_BYTES) -> Request:
    """Parse one RPC request envelope ``{"header": {...}, "data": {...}}``.

    Accepts ujson's compact form and ``json.dumps`` with spaces; extra header
    members and a missing ``timestamp`` are fine, as for the bot.

    Raises
    ------
    ProtocolError
        With ``reply_to=None`` when the payload is too big (checked before
        parsing), not UTF-8 JSON, not an object, or has no usable
        ``header.reply_to``; with ``reply_to`` set when only ``data`` is
        missing or not an object.
    """
    if len(payload) > max_bytes:
        msg = f"request is {len(payload)} bytes; the limit is {max_bytes}"
        raise ProtocolError(msg, reply_to=_leading_reply_to(payload))
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as e:
        msg = f"request is not UTF-8 text ({e.reason} at byte {e.start})"
        raise ProtocolError(msg) from e
    try:
        message = json.loads(text, parse_constant=_reject_constant, parse_float=_parse_float)
    except (ValueError, RecursionError) as e:
        msg = f"request is not JSON: {e}"
        raise ProtocolError(msg, reply_to=_lenient_reply_to(text)) from e
    if not isinstance(message, dict):
        msg = f'request must be a JSON object {{"header": ..., "data": ...}}, not {_json_type(message)}'
        raise ProtocolError(msg)
    header = message.get("header")
    if not isinstance(header, dict):
        what = "missing or null" if header is None else f"{_json_type(header)}, not an object"
        msg = f'request header is {what}; send {{"header": {{"reply_to": ...}}, "data": {{...}}}}'
        raise ProtocolError(msg)
    reply_to = _check_reply_to(header.get("reply_to"))
    data = message.get("data")
    if not isinstance(data, dict):
        what = "missing" if "data" not in message else f"{_json_type(data)}, not an object"
        msg = f"request data is {what}; send an object, {{}} for no arguments"
        raise ProtocolError(msg, reply_to=reply_to)
    return Request(reply_to=reply_to, header=header, data=data)


_LEADING_REPLY_TO = re.compile(rb'^\s*\{\s*"header"\s*:\s*\{[^{}]*?"reply_to"\s*:\s*("(?:[^"\\]|\\.){1,1024}")')
"""``reply_to`` in a header that opens the envelope (as commlib and hummingbot-api send it)."""
_LEADING_BYTES = 4096
"""How much of an oversized request is searched for its ``reply_to``: never the whole of it."""


def _leading_reply_to(payload: bytes | bytearray | memoryview) -> str | None:
    """Return the usable ``reply_to`` of an oversized request whose header comes first, else ``None``.

    Only the first :data:`_LEADING_BYTES` are read, so a flood of huge requests costs no parsing.
    """
    found = _LEADING_REPLY_TO.match(bytes(payload[:_LEADING_BYTES]))
    if found is None:
        return None
    try:
        return _check_reply_to(json.loads(found.group(1)))
    except (ValueError, ProtocolError):
        return None


def _lenient_reply_to(text: str) -> str | None:
    """Return the usable ``reply_to`` of a request refused for NaN, Infinity or a huge number, else ``None``."""
    try:
        message = json.loads(text, parse_constant=lambda _name: None)
    except (ValueError, RecursionError):
        return None
    header = message.get("header") if isinstance(message, dict) else None
    if not isinstance(header, dict):
        return None
    try:
        return _check_reply_to(header.get("reply_to"))
    except ProtocolError:
        return None


def _parse_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        msg = f"number {text[:32]} is out of range"
        raise ValueError(msg)
    return number


def _reject_constant(name: str) -> t.NoReturn:
    msg = f"{name} is not valid JSON"
    raise ValueError(msg)


def _json_type(value: object) -> str:
    names = {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }
    return "null" if value is None else names.get(type(value), type(value).__name__)


def encode_reply(data: Mapping[str, t.Any], *, now_ms: int | None = None) -> bytes:
    """Return the reply envelope commlib 0.11 writes around ``data``.

    ``header.reply_to`` is always ``""`` (servers never fill it); ``now_ms``
    defaults to the current time in milliseconds.
    """
    header = {
        "reply_to": "",
        "timestamp": _now_ms() if now_ms is None else now_ms,
        **_HEADER_TAIL,
    }
    return dumps(make_primitive({"header": header, "data": dict(data)}))


def encode_request(data: Mapping[str, t.Any], reply_to: str, *, now_ms: int | None = None) -> bytes:
    """Return a request envelope as commlib 0.11's RPC client writes it.

    Raises
    ------
    ProtocolError
        If ``reply_to`` could not be answered (see :func:`reply_topic`).
    """
    _check_reply_to(reply_to)
    header = {
        "reply_to": reply_to,
        "timestamp": _now_ms() if now_ms is None else now_ms,
        **_HEADER_TAIL,
    }
    return dumps(make_primitive({"header": header, "data": dict(data)}))


# ------------------------------------------------------------------------ streams


def heartbeat(now_us: int | None = None) -> bytes:
    """Return a ``{p}/hb`` payload, ``{"ts": <microseconds>}``."""
    return dumps(make_primitive({"ts": time.time_ns() // 1000 if now_us is None else now_us}))


def status_update(msg: t.Literal["online", "offline"], now_ms: int | None = None) -> bytes:
    """Return a ``{p}/status_updates`` availability payload."""
    if msg not in ("online", "offline"):
        text = f"status update must be 'online' or 'offline', not {msg!r}"
        raise ValueError(text)
    timestamp = _now_ms() if now_ms is None else now_ms
    return dumps(make_primitive({"timestamp": timestamp, "type": "availability", "msg": msg}))


def notify(seq: int, msg: str) -> bytes:
    """Return a ``{p}/notify`` payload; its timestamp is the bot's ``"-1"`` quirk."""
    return dumps(make_primitive({"seq": seq, "timestamp": -1, "msg": msg}))


# ------------------------------------------------------------------ hbot commands

_Kind = t.Literal["bool", "str", "int", "float", "pairs", "lists"]


@dataclasses.dataclass(frozen=True)
class _Field:
    """One member of a bot Request model (all the bot's optional ones accept null)."""

    name: str
    kind: _Kind
    default: t.Any = None
    required: bool = False


_REQUESTS: dict[str, tuple[_Field, ...]] = {
    "start": (
        _Field("log_level", "str"),
        _Field("script", "str"),
        _Field("conf", "str"),
        _Field("is_quickstart", "bool", False),
        _Field("async_backend", "bool", True),
    ),
    "stop": (
        _Field("skip_order_cancellation", "bool", False),
        _Field("async_backend", "bool", True),
    ),
    "config": (_Field("params", "pairs", []),),
    "import": (_Field("strategy", "str", required=True),),
    "status": (_Field("async_backend", "bool", True),),
    "history": (
        _Field("days", "float", 0.0),
        _Field("verbose", "bool", False),
        _Field("precision", "int"),
        _Field("async_backend", "bool", True),
    ),
    "balance/limit": (
        _Field("exchange", "str", required=True),
        _Field("asset", "str", required=True),
        _Field("amount", "float", required=True),
    ),
    "balance/paper": (
        _Field("asset", "str", required=True),
        _Field("amount", "float", required=True),
    ),
    "command_shortcuts": (_Field("params", "lists", []),),
}

#: The fields of the ``start`` request that name the strategy to run.
STRATEGY_FIELDS: tuple[str, ...] = ("script", "conf")
# Fields the agent acts on itself: they never become part of a typed console line.
_AGENT_FIELDS = frozenset({"log_level", "is_quickstart", "async_backend", "skip_order_cancellation"})
#: Request fields a recipe's console line may use as ``{variables}`` (``{conf}``, ``{days}``, ``{amount}``...).
CONSOLE_FIELDS: tuple[str, ...] = tuple(
    dict.fromkeys(f.name for fields in _REQUESTS.values() for f in fields if f.name not in _AGENT_FIELDS)
)
# Shortcuts are the user's own console lines already; there is no one line to configure for them.
_NO_CONSOLE_LINE = frozenset({"command_shortcuts"})


def console_key(command: str) -> str:
    """Return the recipe's ``console.KEY`` for a bot command (``balance/limit`` is ``balance_limit``)."""
    return command.replace("/", "_")


#: The bot commands a recipe may give a console line for, by their ``console.KEY``.
CONSOLE_COMMANDS: tuple[str, ...] = tuple(console_key(c) for c in HBOT_COMMANDS if c not in _NO_CONSOLE_LINE)

_STATUS_MSG: tuple[tuple[str, t.Any], ...] = (("status", STATUS_OK), ("msg", ""))
_RESPONSES: dict[str, tuple[tuple[str, t.Any], ...]] = {
    "start": _STATUS_MSG,
    "stop": _STATUS_MSG,
    "import": _STATUS_MSG,
    "config": (("changes", []), ("config", {}), *_STATUS_MSG),
    "status": (*_STATUS_MSG, ("data", "")),
    "history": (*_STATUS_MSG, ("trades", [])),
    "balance/limit": (*_STATUS_MSG, ("data", "")),
    "balance/paper": (*_STATUS_MSG, ("data", "")),
    "command_shortcuts": (("success", []), *_STATUS_MSG),
}


# The bot's balance() returns nothing, so a balance reply that succeeded carries "data": null (an error keeps "").
_DATA_NULL_ON_SUCCESS = frozenset({"balance/limit", "balance/paper"})


def validate(command: str, data: Mapping[str, t.Any]) -> dict[str, t.Any]:
    """Return ``data`` checked against the bot's Request model, defaults filled.

    Coercions follow pydantic 2's lax mode as the bot applies it: a bool also
    accepts 0/1 and words such as ``"true"``/``"no"``; numbers accept numeric
    strings (commlib <= 0.13.1 clients send negative ints as strings). An
    explicit null, which the bot's Optional fields allow, makes a bool False
    (the bot tests it for truthiness) and ``days``/``params`` their defaults.
    Unknown members are ignored. Non-finite numbers are refused (they could
    not be echoed as JSON).

    Raises
    ------
    ProtocolError
        On an unknown command, a missing required field or a wrong type.
    """
    fields = _REQUESTS.get(command)
    if fields is None:
        msg = f"command '{command}' is unknown. Known commands: {_KNOWN_COMMANDS}"
        raise ProtocolError(msg)
    if not isinstance(data, Mapping):
        msg = f"command '{command}': data must be an object, not {_json_type(data)}"
        raise ProtocolError(msg)
    result: dict[str, t.Any] = {}
    for field in fields:
        if field.name not in data:
            if field.required:
                kind = _KIND_NAMES[field.kind]
                msg = f"command '{command}': field '{field.name}' is required ({kind})"
                raise ProtocolError(msg)
            result[field.name] = _fresh(field.default)
            continue
        value = data[field.name]
        if value is None and not field.required:
            result[field.name] = False if field.kind == "bool" else _fresh(field.default)
            continue
        try:
            result[field.name] = _COERCE[field.kind](value)
        except (TypeError, ValueError) as e:
            msg = (
                f"command '{command}': field '{field.name}' must be "
                f"{_KIND_NAMES[field.kind]}, got {_show(value)}{_detail(e)}"
            )
            raise ProtocolError(msg) from e
    return result


def response(command: str, status: int = STATUS_OK, msg: str = "", **extra: t.Any) -> dict[str, t.Any]:
    """Return ``command``'s full Response model, every field in the bot's order.

    A ``balance/limit`` or ``balance/paper`` reply with status 200 and no ``data`` has ``data: null``, as the bot's.

    Raises
    ------
    ValueError
        On an unknown command.
    TypeError
        On a field the command's Response does not have.
    """
    fields = _RESPONSES.get(command)
    if fields is None:
        text = f"command '{command}' is unknown. Known commands: {_KNOWN_COMMANDS}"
        raise ValueError(text)
    values = {"status": status, "msg": msg, **extra}
    if command in _DATA_NULL_ON_SUCCESS and status == STATUS_OK:
        values.setdefault("data", None)
    unknown = set(values) - {name for name, _ in fields}
    if unknown:
        text = f"response of '{command}' has no field(s) {', '.join(sorted(unknown))}"
        raise TypeError(text)
    return {name: values[name] if name in values else _fresh(default) for name, default in fields}


def _fresh(default: t.Any) -> t.Any:
    """Return a private copy of a default, so callers may mutate lists and dicts."""
    return copy.deepcopy(default)


def _to_bool(value: t.Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    msg = ""
    raise ValueError(msg)


def _to_int(value: t.Any) -> int:
    if isinstance(value, int):  # bools included, as pydantic's lax mode does
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
        return int(value.strip().split(".")[0])
    msg = ""
    raise ValueError(msg)


def _to_float(value: t.Any) -> float:
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip()):
        try:
            number = float(value)
        except OverflowError as e:
            msg = "too large"
            raise ValueError(msg) from e
        if math.isfinite(number):
            return number
        msg = "not finite"
        raise ValueError(msg)
    msg = ""
    raise ValueError(msg)


def _to_str(value: t.Any) -> str:
    if isinstance(value, str):
        return value
    msg = ""
    raise TypeError(msg)


def _to_pairs(value: t.Any) -> list[list[t.Any]]:
    if not isinstance(value, (list, tuple)):
        msg = ""
        raise TypeError(msg)
    pairs: list[list[t.Any]] = []
    for index, item in enumerate(value):
        if not isinstance(item, (list, tuple)) or len(item) != 2 or not isinstance(item[0], str):
            msg = f"item {index} is {_show(item)}"
            raise TypeError(msg)
        pairs.append([item[0], item[1]])
    return pairs


def _to_lists(value: t.Any) -> list[list[t.Any]]:
    if not isinstance(value, (list, tuple)):
        msg = ""
        raise TypeError(msg)
    lists: list[list[t.Any]] = []
    for index, item in enumerate(value):
        if not isinstance(item, (list, tuple)):
            msg = f"item {index} is {_show(item)}"
            raise TypeError(msg)
        lists.append(list(item))
    return lists


_COERCE: dict[_Kind, t.Callable[[t.Any], t.Any]] = {
    "bool": _to_bool,
    "str": _to_str,
    "int": _to_int,
    "float": _to_float,
    "pairs": _to_pairs,
    "lists": _to_lists,
}
_KIND_NAMES: dict[_Kind, str] = {
    "bool": "a boolean (true/false)",
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "pairs": 'a list of [key, value] pairs such as [["mqtt_bridge.mqtt_logger", true]]',
    "lists": 'a list of lists such as [["shortcut", "arg"]]',
}


def _show(value: t.Any) -> str:
    """Describe a received value briefly for an error message."""
    shown = json.dumps(value, default=repr)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{_json_type(value)} {shown}"


def _detail(error: Exception) -> str:
    return f" ({error})" if str(error) else ""


# -------------------------------------------------------------------- own verbs


def validate_own(verb: str, data: Mapping[str, t.Any]) -> dict[str, t.Any]:
    """Return the arguments of one of our own verbs, checked and defaults filled.

    ``send`` needs ``text``: one line of at most 4096 characters that
    :func:`~supervisor.consoletext.check_console_text` accepts (an empty line just presses Enter).
    ``tail`` and ``logs`` take ``lines``, an integer 1..1000 (default 50). ``stop`` takes
    ``timeout`` in seconds, a number in (0, 600] or null (default null: the
    manager's own). Other verbs take nothing. Types are strict JSON types, and
    unknown members are ignored.

    Raises
    ------
    ProtocolError
        On an unknown verb, a missing ``text`` or a value of the wrong type or range.
    """
    if verb not in OWN_VERBS and verb not in HOST_VERBS:
        known = ", ".join(OWN_VERBS + HOST_VERBS)
        msg = f"verb '{verb}' is unknown. Known verbs: {known}"
        raise ProtocolError(msg)
    if not isinstance(data, Mapping):
        msg = f"verb '{verb}': data must be an object, not {_json_type(data)}"
        raise ProtocolError(msg)
    if verb == "send":
        return {"text": _own_text(data)}
    if verb in ("tail", "logs"):
        lines = data.get("lines")
        if lines is None:
            return {"lines": TAIL_LINES_DEFAULT}
        if isinstance(lines, bool) or not isinstance(lines, int) or not 1 <= lines <= TAIL_LINES_MAX:
            msg = f"verb '{verb}': field 'lines' must be an integer from 1 to {TAIL_LINES_MAX}, got {_show(lines)}"
            raise ProtocolError(msg)
        return {"lines": lines}
    if verb == "stop":
        timeout = data.get("timeout")
        if timeout is None:
            return {"timeout": None}
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout)
            or not 0 < timeout <= STOP_TIMEOUT_MAX
        ):
            msg = (
                f"verb 'stop': field 'timeout' must be a number of seconds above 0 and "
                f"at most {STOP_TIMEOUT_MAX:g}, got {_show(timeout)}"
            )
            raise ProtocolError(msg)
        return {"timeout": float(timeout)}
    return {}


def _own_text(data: Mapping[str, t.Any]) -> str:
    if "text" not in data:
        msg = "verb 'send': field 'text' is required (the line to type into the bot)"
        raise ProtocolError(msg)
    text = data["text"]
    if not isinstance(text, str):
        msg = f"verb 'send': field 'text' must be a string, got {_show(text)}"
        raise ProtocolError(msg)
    if len(text) > MAX_SEND_CHARS:
        msg = f"verb 'send': field 'text' is {len(text)} characters; the limit is {MAX_SEND_CHARS}"
        raise ProtocolError(msg)
    try:
        check_console_text(text, what="verb 'send': field 'text'")
    except UnsafeConsoleText as e:
        raise ProtocolError(str(e)) from e
    return text

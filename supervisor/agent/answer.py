"""Reading a plugin-less bot's console the way its recipe says: answers, trades, events, performance.

Pure functions over text and the recipe's patterns; imports no ``paho`` and does no I/O.
"""

from __future__ import annotations

import dataclasses
import decimal
import functools
import json
import math
import re
import typing as t

if t.TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from supervisor.core.recipe import Answer, Mqtt

__all__ = [
    "TRADE_KEYS",
    "ConsoleAnswer",
    "LineMapper",
    "read_answer",
    "read_trades",
    "recent_trades",
    "strip_prompt",
    "trade_record",
    "value_of",
]

#: A trade in ``history``'s reply, keys in Hummingbot's order (its ``TradeFill.to_bounty_api_json``).
TRADE_KEYS: tuple[str, ...] = (
    "market",
    "trade_id",
    "price",
    "quantity",
    "symbol",
    "trade_timestamp",
    "trade_type",
    "base_asset",
    "quote_asset",
    "raw_json",
)
_DAY_SECONDS = 86_400.0

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")


@functools.lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


@dataclasses.dataclass(frozen=True)
class ConsoleAnswer:
    """The console's answer to one command: its lines (noise left out) and whether it is an error."""

    lines: tuple[str, ...]
    error: bool

    @property
    def text(self) -> str:
        """The answer as one string, lines joined by newlines."""
        return "\n".join(self.lines)


def strip_prompt(line: str, prompt: str | None) -> str:
    """Return ``line`` without the console prompt(s) at its start (a log line may follow a prompt)."""
    if not prompt:
        return line.strip()
    pattern = _compile(prompt)
    while True:
        found = pattern.match(line)
        if found is None or not found.group():
            return line.strip()
        line = line[found.end() :]


def _matches(line: str, patterns: Iterable[str]) -> bool:
    return any(_compile(p).search(line) for p in patterns)


def read_answer(text: str, rules: Answer) -> ConsoleAnswer:
    """Return what the console answered in ``text`` (captured output, echo already removed).

    Prompts are removed, empty and ``noise`` lines dropped; the answer is an
    error when one of its lines matches an ``error`` pattern.
    """
    lines = []
    for raw in text.splitlines():
        line = strip_prompt(raw, rules.prompt)
        if line and not _matches(line, rules.noise):
            lines.append(line)
    return ConsoleAnswer(tuple(lines), any(_matches(line, rules.error) for line in lines))


def is_error_line(line: str, rules: Answer) -> bool:
    """Return whether a console line matches one of the recipe's error patterns."""
    return _matches(line, rules.error)


def value_of(text: str) -> int | float | str:
    """Return a captured field as a number when it reads as one, else as the text."""
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


def _fields(found: re.Match[str]) -> dict[str, t.Any]:
    return {key: value_of(value) for key, value in found.groupdict().items() if value is not None}


def _positional(text: str | None) -> str | None:
    """Write a number as Hummingbot does (numpy's ``format_float_positional``).

    ``100.3`` -> ``"100.3"``, ``100`` -> ``"100."``, ``1e-05`` -> ``"0.00001"``; text that is no number stays.
    """
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return text
    digits = format(decimal.Decimal(repr(number)).normalize(), "f")
    return digits if "." in digits else digits + "."


def _trade_fee(text: str | None) -> t.Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def trade_record(fields: Mapping[str, str]) -> dict[str, t.Any]:
    """Return one trade as Hummingbot's ``history`` reply carries it, from the text a ``trades`` pattern captured.

    The keys are :data:`TRADE_KEYS`, always all of them (``null`` for what the
    pattern did not capture): ``price`` and ``quantity`` are strings written as
    Hummingbot writes them, ``trade_timestamp`` an integer (milliseconds), the
    others text (a ``trade_id`` of digits stays a string). ``base_asset`` and
    ``quote_asset`` default to the halves of a ``BASE-QUOTE`` symbol;
    ``raw_json`` holds ``trade_fee`` (the group's JSON, else ``null``). Other
    named groups follow, typed by :func:`value_of`.
    """
    symbol = fields.get("symbol")
    base, dash, quote = (symbol or "").partition("-")
    stamp = fields.get("trade_timestamp")
    record: dict[str, t.Any] = {
        "market": fields.get("market"),
        "trade_id": fields.get("trade_id"),
        "price": _positional(fields.get("price")),
        "quantity": _positional(fields.get("quantity")),
        "symbol": symbol,
        "trade_timestamp": int(stamp) if stamp is not None and _INT.fullmatch(stamp) else stamp,
        "trade_type": fields.get("trade_type"),
        "base_asset": fields.get("base_asset") or (base if dash and base else None),
        "quote_asset": fields.get("quote_asset") or (quote if dash and quote else None),
        "raw_json": {"trade_fee": _trade_fee(fields.get("trade_fee"))},
    }
    extra = {key: value_of(value) for key, value in fields.items() if key not in record and key != "trade_fee"}
    return record | extra


def _newest_first(record: Mapping[str, t.Any]) -> int:
    stamp = record.get("trade_timestamp")
    return stamp if isinstance(stamp, int) else -1


def read_trades(lines: Sequence[str], pattern: str | None) -> tuple[list[dict[str, t.Any]], list[str]]:
    """Split answer lines into trades (:func:`trade_record` of ``pattern``'s named groups) and the other lines.

    Trades come newest first (by ``trade_timestamp``), as Hummingbot's history query orders them.
    """
    if not pattern:
        return [], list(lines)
    compiled = _compile(pattern)
    trades: list[dict[str, t.Any]] = []
    rest: list[str] = []
    for line in lines:
        found = compiled.search(line)
        if found is None:
            rest.append(line)
        else:
            trades.append(trade_record({k: v for k, v in found.groupdict().items() if v is not None}))
    return sorted(trades, key=_newest_first, reverse=True), rest


def recent_trades(trades: Sequence[Mapping[str, t.Any]], days: float, *, now: float) -> list[dict[str, t.Any]]:
    """Return the trades of ``history``'s last ``days`` days, as Hummingbot filters them.

    ``days`` above 0 keeps the trades whose ``trade_timestamp`` (milliseconds) is
    at or after ``now - days`` (``now`` in seconds, e.g. ``time.time()``); a trade
    without one is left out, its age unknown. ``days`` of 0 or less keeps them all
    (Hummingbot: every trade since the bot started, which is what its console shows).
    """
    if days <= 0 or not days * _DAY_SECONDS < now:  # more days than since 1970 (or not a number): all of them
        return [dict(trade) for trade in trades]
    since = int((now - days * _DAY_SECONDS) * 1000)  # Hummingbot's own arithmetic
    kept = []
    for trade in trades:
        stamp = trade.get("trade_timestamp")
        if isinstance(stamp, int) and not isinstance(stamp, bool) and stamp >= since:
            kept.append(dict(trade))
    return kept


class LineMapper:
    """Turns console lines into ``events`` and ``performance`` messages, as a recipe's ``mqtt`` section says."""

    def __init__(self, mqtt: Mqtt, default_controller: str) -> None:
        self._events = [(_compile(e.match), e.type) for e in mqtt.events]
        self._performance = _compile(mqtt.performance) if mqtt.performance else None
        self._controller = default_controller

    def events(self, line: str, now: float) -> list[dict[str, t.Any]]:
        """Return the ``{p}/events`` payloads (``timestamp``, ``type``, ``data``) ``line`` stands for."""
        found = []
        for pattern, kind in self._events:
            match = pattern.search(line)
            if match is not None:
                found.append({"timestamp": int(now), "type": kind, "data": _fields(match)})
        return found

    def performance(self, line: str) -> dict[str, t.Any] | None:
        """Return the ``{p}/performance`` payload for ``line``, keyed by controller, or ``None``.

        The named group ``controller`` (if any) names the controller, otherwise
        the instance does; the other groups are the performance figures.
        """
        if self._performance is None:
            return None
        match = self._performance.search(line)
        if match is None:
            return None
        figures = _fields(match)
        controller = str(figures.pop("controller", self._controller))
        return {controller: {"performance": figures, "custom_info": {}}}

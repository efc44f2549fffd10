"""Reading a plugin-less bot's console the way its recipe says: answers, trades, events, performance.

Pure functions over text and the recipe's patterns; imports no ``paho`` and does no I/O.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing as t

if t.TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from supervisor.core.recipe import Answer, Mqtt

__all__ = ["ConsoleAnswer", "LineMapper", "read_answer", "read_trades", "strip_prompt", "value_of"]

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


def read_trades(lines: Sequence[str], pattern: str | None) -> tuple[list[dict[str, t.Any]], list[str]]:
    """Split answer lines into trade records (``pattern``'s named groups) and the other lines."""
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
            trades.append(_fields(found))
    return trades, rest


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

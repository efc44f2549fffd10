"""Publishing a plugin-less bot's console as Hummingbot's ``log``, ``events`` and ``performance`` streams.

Reads each console log from where it was last read (never from the start), and
hands payloads to a publish function; imports no ``paho``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import typing as t

from supervisor.agent.answer import LineMapper, is_error_line, strip_prompt
from supervisor.logfiles import clean_console, read_chunk
from supervisor.mqtt import protocol

if t.TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from supervisor.core.recipe import Recipe

logger = logging.getLogger(__name__)

MAX_LINE_CHARS = 2000
INFO, WARNING, ERROR = 20, 30, 40
_LEVEL_NAMES = {INFO: "INFO", WARNING: "WARNING", ERROR: "ERROR"}


@dataclasses.dataclass
class _Reader:
    """Where one instance's console was read up to, and its rate-limit bucket."""

    offset: int
    tokens: float
    refilled: float
    buffer: str = ""
    dropped: int = 0


def log_record(msg: str, level: int, logger_name: str, now: float) -> bytes:
    """Return a ``{p}/log`` payload in the shape Hummingbot's bridge writes."""
    record = {
        "timestamp": now,
        "msg": msg,
        "level_no": level,
        "level_name": _LEVEL_NAMES.get(level, "INFO"),
        "logger_name": logger_name,
    }
    return protocol.dumps(protocol.make_primitive(record))


class ConsoleStream:
    """Follows the console logs of plugin-less bots and publishes what the recipe asks for.

    Parameters
    ----------
    publish
        Called with a topic and a payload (QoS 0, not retained, as the bot's bridge).
    namespace
        Hummingbot's namespace (``hbot``).
    """

    def __init__(
        self, publish: Callable[[str, bytes], object], namespace: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._publish = publish
        self._ns = namespace
        self._clock = clock
        self._readers: dict[str, _Reader] = {}
        self._mappers: dict[str, tuple[Recipe, LineMapper]] = {}

    def forget(self, name: str) -> None:
        """Stop following ``name`` (its next :meth:`poll` starts at the log's end again)."""
        self._readers.pop(name, None)
        self._mappers.pop(name, None)

    def follow(self, names: t.Iterable[str]) -> None:
        """Forget every instance not in ``names``."""
        keep = set(names)
        for name in set(self._readers) - keep:
            self.forget(name)

    def has_news(self, name: str, path: str | Path) -> bool:
        """Return whether ``name``'s console log may hold lines not published yet (one ``stat``; no read).

        A log that shrank (rotated) counts as news; so does a bot not followed yet, whose first poll marks the end.
        """
        reader = self._readers.get(name)
        if reader is None:
            return True
        try:
            return os.stat(path).st_size != reader.offset  # noqa: PTH116 - a str path: no Path object per look
        except OSError:
            return False

    def poll(self, name: str, path: Path, recipe: Recipe) -> int:
        """Publish the lines ``name`` printed since the last poll; return how many lines were read."""
        now = self._clock()
        reader = self._readers.get(name)
        if reader is None:
            size = path.stat().st_size if path.exists() else 0
            self._readers[name] = _Reader(offset=size, tokens=recipe.mqtt.log_rate, refilled=now)
            return 0
        chunk, reader.offset = read_chunk(path, reader.offset)
        if not chunk:
            return 0
        *complete, reader.buffer = (reader.buffer + chunk).split("\n")
        if len(reader.buffer) > MAX_LINE_CHARS * 4:  # a line without end (a spinner): publish what we have
            complete.append(reader.buffer)
            reader.buffer = ""
        mapper = self._mapper(name, recipe)
        prefix = f"{self._ns}/{name}"
        capacity = max(1.0, recipe.mqtt.log_rate)
        reader.tokens = min(capacity, reader.tokens + (now - reader.refilled) * recipe.mqtt.log_rate)
        reader.refilled = now
        for raw in complete:
            line = strip_prompt(clean_console(raw), recipe.console.answer.prompt)
            if not line:
                continue
            line = line[:MAX_LINE_CHARS]
            for event in mapper.events(line, now):
                self._publish(f"{prefix}/events", protocol.dumps(protocol.make_primitive(event)))
            performance = mapper.performance(line)
            if performance is not None:
                self._publish(f"{prefix}/performance", protocol.dumps(protocol.make_primitive(performance)))
            if not recipe.mqtt.log:
                continue
            if reader.tokens < 1:
                reader.dropped += 1
                continue
            if reader.dropped:
                note = f"{reader.dropped} console line(s) not published on {prefix}/log (over {capacity:g}/s)"
                self._publish(f"{prefix}/log", log_record(note, WARNING, "supervisor.agent", now))
                reader.dropped = 0
                reader.tokens -= 1
                if reader.tokens < 1:
                    reader.dropped += 1
                    continue
            level = ERROR if is_error_line(line, recipe.console.answer) else INFO
            self._publish(f"{prefix}/log", log_record(line, level, f"{recipe.name}.console", now))
            reader.tokens -= 1
        return len(complete)

    def _mapper(self, name: str, recipe: Recipe) -> LineMapper:
        cached = self._mappers.get(name)
        if cached is None or cached[0] is not recipe:
            cached = (recipe, LineMapper(recipe.mqtt, name))
            self._mappers[name] = cached
        return cached[1]

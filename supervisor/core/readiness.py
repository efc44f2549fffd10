"""What a bot printed since its last launch: its login prompt, its ready line.

One small JSON file per instance, reset at each launch and advanced by whoever
looks (``start``'s wait, ``ls``, the agent): each look reads only the console
output written since the previous one, so a later ``ls`` knows a bot was ready
without rereading its log. Imports nothing of ours.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import typing as t
from pathlib import Path

from supervisor.files import atomic_write, locked

if t.TYPE_CHECKING:
    import re
    from collections.abc import Callable

CARRY_CHARS = 4096
"""How much of an unfinished last line is kept for the next look (a prompt has no newline)."""
UNSAVED_SPAN = 16384
"""Output a look may leave unrecorded when it found nothing new: the next look reads it again (no write per look)."""


@dataclasses.dataclass(frozen=True)
class Seen:
    """The console output since launch, as far as it was read."""

    offset: int
    """Byte position in the console log read up to."""
    carry: str = ""
    """The unfinished last line, searched again with what follows it."""
    login: bool = False
    ready: bool = False


def _lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def _locked(path: Path) -> t.ContextManager[None]:
    # The agent and a CLI may look at once: one writer at a time, so "ready" is never lost.
    return locked(_lock_path(path))


def load(path: Path) -> Seen | None:
    """Return what was recorded, or ``None`` when nothing is (a bot launched before readiness was tracked)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Seen(
            offset=int(data["offset"]),
            carry=str(data.get("carry", "")),
            login=bool(data.get("login")),
            ready=bool(data.get("ready")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save(path: Path, seen: Seen) -> None:
    atomic_write(path, json.dumps(dataclasses.asdict(seen)), sync=False)


def reset(path: Path, offset: int) -> None:
    """Start tracking a new launch whose output begins at byte ``offset`` of the console log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        _save(path, Seen(offset=offset))


def mark_ready(path: Path) -> None:
    """Record that the ready line was seen (by a caller that read the log itself)."""
    with contextlib.suppress(OSError), _locked(path):
        seen = load(path)
        if seen is not None and not seen.ready:
            _save(path, dataclasses.replace(seen, ready=True, carry=""))


def observe(
    path: Path,
    read: Callable[[int], tuple[str, int]],
    ready: re.Pattern[str],
    login: re.Pattern[str] | None,
) -> Seen | None:
    """Read the output since the last look and return what has been seen since launch.

    ``read(offset)`` returns the log's text after ``offset`` and the new offset.
    Returns ``None`` when this launch is not tracked. A failed write (full
    disk) only means the next look reads the same output again.
    """
    seen = load(path)
    if seen is None or seen.ready:
        return seen
    try:
        with _locked(path):
            seen = load(path)
            if seen is None or seen.ready:
                return seen
            chunk, offset = read(seen.offset)
            if not chunk and offset == seen.offset:
                return seen
            text = seen.carry + chunk
            found_ready = ready.search(text) is not None
            found_login = seen.login or (login is not None and login.search(text) is not None)
            _, newline, rest = text.rpartition("\n")
            carry = (rest if newline else text)[-CARRY_CHARS:]
            found = Seen(offset=offset, carry="" if found_ready else carry, login=found_login, ready=found_ready)
            if found_ready or found_login != seen.login or offset - seen.offset > UNSAVED_SPAN:
                _save(path, found)
            seen = found
    except OSError:
        return seen
    return seen

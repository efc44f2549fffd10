"""One bot's console, typed into by one process at a time: a line, then its answer, never another's.

Every line typed (a relayed command, ``send``, an external event) is noted as
unanswered until the bot's prompt (or the recipe's ``answer.end``) shows after
it. A command whose answer is captured first waits, at most ``reply_wait``, for
that answer to end: its own answer is read from after it, so a slow bot's late
output (or the output of a line sent just before) never lands in its reply. A line whose answer did not come within
:data:`GIVE_UP_AFTER` ``reply_wait`` periods holds the console no longer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import time
import typing as t

from supervisor.errors import ConsoleBusy
from supervisor.files import atomic_write, locked
from supervisor.logfiles import ANSWER_POLL, is_answered, read_from, shows_again, wait_for_answer

if t.TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from supervisor.core.recipe import Console

__all__ = ["GIVE_UP_AFTER", "Typed", "type_line"]

GIVE_UP_AFTER = 8
"""After this many ``reply_wait`` periods (and at least :data:`GIVE_UP_AT_LEAST` s) an unanswered line is let go."""
GIVE_UP_AT_LEAST = 5.0


@dataclasses.dataclass(frozen=True)
class Typed:
    """What the bot printed after a typed line, and whether its answer was seen to end."""

    text: str
    complete: bool


def _pending(path: Path) -> tuple[int, float] | None:
    try:
        data = json.loads(path.read_text())
        return int(data["offset"]), float(data["at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _settle(name: str, log: Path, pending_file: Path, end: re.Pattern[str], bound: float) -> None:
    """Wait (at most ``bound``) for the answer to a line typed before to end; raise when it does not.

    Raises
    ------
    ConsoleBusy
        The earlier line's answer has not ended (and it is not yet old enough to be let go).
    """
    pending = _pending(pending_file)
    if pending is None:
        return
    offset, at = pending
    deadline = time.monotonic() + bound
    while True:
        if shows_again(read_from(log, offset), end):  # the prompt is back after the earlier line
            break
        age = time.time() - at
        if age > max(GIVE_UP_AT_LEAST, GIVE_UP_AFTER * bound):
            break  # long enough: whatever it printed is not the next command's answer
        if time.monotonic() >= deadline:
            raise ConsoleBusy(name, age)
        time.sleep(ANSWER_POLL)
    with contextlib.suppress(OSError):
        pending_file.unlink()


def type_line(
    name: str,
    line: str,
    send: Callable[[], None],
    *,
    log: Path,
    lock: Path,
    pending_file: Path,
    console: Console,
    capture: bool,
) -> Typed:
    """Type ``line`` (``send`` does it) once the console has answered what came before; read its answer.

    Without ``capture`` (``send``, an external event) it types at once, whatever
    came before, and returns: the next command captured waits for this line's
    answer instead. The wait for an answer ends at the recipe's
    ``answer.end`` (its prompt by default), at the latest after ``reply_wait``.

    Raises
    ------
    ConsoleBusy
        The answer to a line typed before has not ended within ``reply_wait``.
    """
    pattern = console.answer.end_pattern
    end = re.compile(pattern) if pattern else None
    with locked(lock):  # one process at a time types into this console and reads its answer
        if end is not None and capture:
            # A command's answer is read from after the earlier line's: a plain send types at once.
            _settle(name, log, pending_file, end, console.reply_wait)
        offset = log.stat().st_size if log.exists() else 0
        if end is not None:
            # Until its answer is seen to end, this line holds the console (also for other processes).
            atomic_write(pending_file, json.dumps({"offset": offset, "at": time.time()}), mode=0o600, sync=False)
        send()
        if not capture:
            return Typed("", False)
        text = wait_for_answer(log, offset, line, end, console.reply_wait)
        complete = end is None or is_answered(text, line, end)
        if end is not None and complete:
            with contextlib.suppress(OSError):
                pending_file.unlink()
        return Typed(text, complete)

"""The one rule for text typed into a bot's console, from any front end.

A console line is typed literally, and a terminal acts on control characters
(Ctrl-U erases the typed line, Ctrl-C interrupts the bot, ESC starts a
sequence). So a line that comes from a client — the CLI's ``send``, the
dashboard, our MQTT namespace or a Hummingbot topic — may hold printable text
only: no C0 control (U+0000 to U+001F, which includes TAB, CR, LF and ESC), no
DEL (U+007F) and no C1 control (U+0080 to U+009F). Deliberate key presses go
through :meth:`supervisor.sessions.base.SessionBackend.send_keys` instead.
"""

from __future__ import annotations

import re

from supervisor.errors import UnsafeConsoleText

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def control_characters(text: str) -> list[str]:
    """Return the distinct control characters in ``text``, as ``U+XXXX`` names, in order of appearance."""
    seen: dict[str, None] = {}
    for match in _CONTROL.finditer(text):
        seen.setdefault(f"U+{ord(match.group()):04X}", None)
    return list(seen)


def check_console_text(text: str, *, what: str) -> str:
    """Return ``text`` unchanged when it is safe to type; raise otherwise.

    ``what`` names the value for the message, e.g. ``"field 'strategy'"`` or
    ``"send text for instance 'bot-1'"``.

    Raises
    ------
    UnsafeConsoleText
        ``text`` holds a control character (C0, DEL, C1; ESC included).
    """
    found = control_characters(text)
    if found:
        raise UnsafeConsoleText(what, found)
    return text

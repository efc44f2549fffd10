"""The one rule for text typed into a bot's console, from any front end.

A console line is typed literally, and a terminal acts on control characters
(Ctrl-U erases the typed line, Ctrl-C interrupts the bot, ESC starts a
sequence). So a line that comes from a client — the CLI's ``send``, the
dashboard, our MQTT namespace or a Hummingbot topic — may hold printable text
only: no C0 control (U+0000 to U+001F, which includes TAB, CR, LF and ESC), no
DEL (U+007F) and no C1 control (U+0080 to U+009F). Nor may it hold a lone
surrogate (U+D800 to U+DFFF): that is text which was not valid UTF-8 (a raw byte
such as 0x9B in a command-line argument, which Python decodes as U+DC9B) or a
half ``\\uXXXX`` pair in JSON; tmux would type it back as the raw byte (0x9B is
the C1 CSI) and a bot reading strict UTF-8 fails on it. Deliberate key presses
go through :meth:`supervisor.core.sessions.base.SessionBackend.send_keys` instead.
"""

from __future__ import annotations

import re

from supervisor.errors import SessionError, UnsafeConsoleText

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def control_characters(text: str) -> list[str]:
    """Return the distinct characters of ``text`` that may not be typed, as ``U+XXXX`` names, in order of appearance.

    These are the control characters (C0, DEL, C1) and lone surrogates (text that was not valid UTF-8).
    """
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
        ``text`` holds a control character (C0, DEL, C1; ESC included) or a lone surrogate.
    """
    found = control_characters(text)
    if found:
        raise UnsafeConsoleText(what, found)
    return text


# Key names as tmux's send-keys spells them, with the bytes a terminal sends for each
# (screen has no key names: it types these bytes).
_NAMED_KEYS: dict[str, bytes] = {
    "Enter": b"\r",
    "Escape": b"\x1b",
    "Tab": b"\t",
    "BTab": b"\x1b[Z",
    "BSpace": b"\x7f",
    "Space": b" ",
    "Up": b"\x1b[A",
    "Down": b"\x1b[B",
    "Right": b"\x1b[C",
    "Left": b"\x1b[D",
    "Home": b"\x1b[1~",
    "End": b"\x1b[4~",
    "IC": b"\x1b[2~",
    "DC": b"\x1b[3~",
    "PPage": b"\x1b[5~",
    "NPage": b"\x1b[6~",
    "F1": b"\x1bOP",
    "F2": b"\x1bOQ",
    "F3": b"\x1bOR",
    "F4": b"\x1bOS",
    "F5": b"\x1b[15~",
    "F6": b"\x1b[17~",
    "F7": b"\x1b[18~",
    "F8": b"\x1b[19~",
    "F9": b"\x1b[20~",
    "F10": b"\x1b[21~",
    "F11": b"\x1b[23~",
    "F12": b"\x1b[24~",
}
_ALIASES = {
    "esc": "Escape",
    "return": "Enter",
    "backspace": "BSpace",
    "pageup": "PPage",
    "pgup": "PPage",
    "pagedown": "NPage",
    "pgdn": "NPage",
    "delete": "DC",
    "insert": "IC",
}
_BY_LOWER = {name.lower(): name for name in _NAMED_KEYS} | _ALIASES
# Ctrl plus a letter or one of @[\]^_ : the C0 control whose code is the character's minus 0x40.
_CTRL_CHARS = "@abcdefghijklmnopqrstuvwxyz[\\]^_"


def parse_key(name: str) -> str:
    """Return the canonical (tmux) name of one key such as ``C-c``, ``Enter``, ``Escape`` or ``Up``.

    Raises
    ------
    SessionError
        ``name`` is not a key this supervisor knows.
    """
    if len(name) == 3 and name[:2] in ("C-", "c-") and name[2].lower() in _CTRL_CHARS:
        return f"C-{name[2].lower()}"
    canonical = _BY_LOWER.get(name.lower())
    if canonical is None:
        known = ", ".join(["C-a … C-z", *_NAMED_KEYS])
        msg = f"key '{name}' is not known. Use one of: {known}."
        raise SessionError(msg)
    return canonical


def key_bytes(name: str) -> bytes:
    """Return what a terminal sends for the key ``name`` (a canonical name from :func:`parse_key`)."""
    if name.startswith("C-") and len(name) == 3:
        return bytes([ord(name[2].upper()) - 0x40])
    return _NAMED_KEYS[name]

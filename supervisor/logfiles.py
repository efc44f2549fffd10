"""Console and audit log files: rotate by copy-and-truncate, read from an offset, follow, clean.

Shared by the manager, the CLI and the agent; standard library only.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
import typing as t

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_KEEP = 3


def private_file(path: Path) -> Path:
    """Create ``path`` empty and owner-only (600) if it is missing, so appenders keep that mode; return it.

    Logs hold every console line, command and alert: another local user must not read them.
    """
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return path


def rotate_log(path: Path, max_bytes: int = LOG_MAX_BYTES, keep: int = LOG_KEEP) -> bool:
    """Rotate ``path`` by copy-and-truncate when it exceeds ``max_bytes``; return whether it did.

    Copy-and-truncate (not rename) because the session's writer keeps the file
    open in append mode and would go on writing to a renamed file.
    """
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for i in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{i + 1}"))
    copy = path.with_name(f"{path.name}.1")
    shutil.copyfile(path, copy)
    copy.chmod(path.stat().st_mode & 0o777)  # a log is owner-only: so is its rotated copy
    with path.open("r+b") as handle:
        handle.truncate(0)
    return True


def read_chunk(path: Path, offset: int) -> tuple[str, int]:
    """Return the text of ``path`` after byte ``offset`` and the new offset (from 0 if the file shrank)."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size < offset:
                offset = 0
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return "", offset
    return data.decode("utf-8", "replace"), offset + len(data)


def read_from(path: Path, offset: int) -> str:
    """Return the text of ``path`` after byte ``offset`` (all of it if the file shrank)."""
    return read_chunk(path, offset)[0]


_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Za-z0-9]|\x1b[=>]|\r")


def is_answered(text: str, echo: str, end: re.Pattern[str]) -> bool:
    """Return whether console output ``text`` shows the answer to the typed line ``echo`` complete.

    It is once a line after the echoed command (the unfinished last one too:
    a prompt has no newline) starts with ``end``.
    """
    lines = [_ANSI_RE.sub("", line) for line in text.split("\n")]
    for i, line in enumerate(lines):
        if line.rstrip().endswith(echo):
            return any(end.match(after) for after in lines[i + 1 :])
    return False


def shows_again(text: str, end: re.Pattern[str]) -> bool:
    """Return whether a line after the first of ``text`` (the typed line's echo) starts with ``end``."""
    return any(end.match(_ANSI_RE.sub("", line)) for line in text.split("\n")[1:])


ANSWER_POLL = 0.002
"""Seconds between two reads of the console log while an answer is awaited."""


def wait_for_answer(path: Path, offset: int, echo: str, end: re.Pattern[str] | None, timeout: float) -> str:
    """Return the console output after ``offset`` once the answer to ``echo`` is complete, or after ``timeout``.

    Without an ``end`` pattern there is no telling: the whole ``timeout`` is waited.
    """
    deadline = time.monotonic() + timeout
    text = ""
    while True:
        text = read_from(path, offset)
        remaining = deadline - time.monotonic()
        if remaining <= 0 or (end is not None and is_answered(text, echo, end)):
            return text
        time.sleep(min(remaining, ANSWER_POLL if end is not None else remaining))


def clean_console(text: str, *, echo: str | None = None) -> str:
    """Strip terminal escapes and the echoed command line from console output."""
    lines = [_ANSI_RE.sub("", line).rstrip() for line in text.split("\n")]
    if echo is not None:
        lines = [line for line in lines if not line.endswith(echo)]
    return "\n".join(line for line in lines if line).strip()


def follow(path: Path, lines: int, *, poll: float = 0.2, stop: Callable[[], bool] | None = None) -> Iterator[str]:
    """Yield the last ``lines`` lines of ``path`` and then every new line, surviving rotation."""
    with contextlib.suppress(FileNotFoundError):
        yield from last_lines(path, lines)
    position = path.stat().st_size if path.exists() else 0
    buffer = ""
    while not (stop and stop()):
        chunk, position = read_chunk(path, position)
        if chunk:
            buffer += chunk
            *complete, buffer = buffer.split("\n")
            yield from complete
        else:
            time.sleep(poll)


def last_lines(path: Path, count: int) -> list[str]:
    """Return the last ``count`` lines of a text file, reading only its end."""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        block = min(size, max(8192, count * 256))
        data = b""
        while True:
            handle.seek(size - block)
            data = handle.read(block)
            if data.count(b"\n") > count or block == size:
                break
            block = min(size, block * 2)
    text = data.decode("utf-8", "replace").splitlines()
    return text[-count:] if count else []

"""The interface every session backend (tmux, screen) implements.

Typing-only: imports nothing but :mod:`typing`, :mod:`dataclasses`,
:mod:`pathlib` and :mod:`supervisor.errors`.
"""

from __future__ import annotations

import dataclasses
import typing as t

if t.TYPE_CHECKING:
    from pathlib import Path


@dataclasses.dataclass(frozen=True)
class SessionInfo:
    """One live session as its backend reports it.

    ``pid`` is the first process *inside* the session: tmux's pane pid, or the
    child of screen's own SCREEN process. ``None`` when it cannot be told.
    """

    name: str
    backend: str
    pid: int | None
    created: float | None = None
    attached: bool = False
    address: str = ""
    """What the backend's own CLI accepts as a target (screen: ``<pid>.<name>``)."""


@dataclasses.dataclass(frozen=True)
class SessionSpec:
    """One session to start: what :meth:`SessionBackend.new_session` takes, for a batch."""

    name: str
    argv: t.Sequence[str]
    cwd: Path
    log_path: Path
    env: t.Mapping[str, str] | None = None


class SessionBackend(t.Protocol):
    """What the manager needs from a terminal multiplexer.

    Liveness is lenient, actions are loud: ``list_sessions`` and
    ``has_session`` treat a dead server as "no sessions"; every other method
    raises :class:`~supervisor.errors.SessionError` (or
    :class:`~supervisor.errors.BackendUnavailable`) when it cannot do its job.
    """

    name: str

    def is_available(self) -> bool:
        """Return whether the backend's binary is installed."""
        ...

    def list_sessions(self) -> dict[str, SessionInfo]:
        """Return every session by name, in one query to the backend."""
        ...

    def has_session(self, name: str) -> bool:
        """Return whether a session of that exact name exists."""
        ...

    def new_session(
        self,
        name: str,
        argv: t.Sequence[str],
        *,
        cwd: Path,
        log_path: Path,
        env: t.Mapping[str, str] | None = None,
        width: int = 200,
        height: int = 50,
    ) -> SessionInfo:
        """Start a detached session running ``argv``; its output is appended to ``log_path``.

        Logging is in place before the program prints its first byte.
        Raises :class:`~supervisor.errors.SessionError` if the name is taken.
        """
        ...

    def new_sessions(self, specs: t.Sequence[SessionSpec]) -> list[SessionInfo]:
        """Start several sessions as :meth:`new_session` does, in as few backend calls as it can.

        Returns their infos in order. Raises :class:`~supervisor.errors.SessionError`
        at the first that cannot start; the ones before it run, the ones after it do not.
        """
        ...

    def kill_session(self, name: str) -> None:
        """End the session and every process in it; a missing session is not an error."""
        ...

    def send_line(self, name: str, text: str, *, enter: bool = True) -> None:
        """Type ``text`` into the session literally (no key names, no escapes), then Enter.

        Raises :class:`~supervisor.errors.UnsafeConsoleText` if ``text`` holds a control character.
        """
        ...

    def send_keys(self, name: str, keys: t.Sequence[str]) -> None:
        """Press ``keys`` in order: canonical key names from :func:`supervisor.consoletext.parse_key`."""
        ...

    def capture(self, name: str, lines: int = 50) -> str:
        """Return the last ``lines`` lines of the session's screen and scrollback, trailing blanks trimmed."""
        ...

    def attach_command(self, name: str) -> tuple[list[str], dict[str, str] | None]:
        """Return the argv (and environment, or ``None`` for ours) that attaches a terminal to the session."""
        ...

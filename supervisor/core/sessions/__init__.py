"""Session backends: tmux (libtmux) and GNU screen behind one interface."""

from __future__ import annotations

import typing as t

from supervisor.core.sessions.base import SessionBackend, SessionInfo, SessionSpec
from supervisor.errors import SupervisorError
from supervisor.states import BACKENDS

if t.TYPE_CHECKING:
    from supervisor.paths import Paths

KNOWN_BACKENDS = BACKENDS

__all__ = ["KNOWN_BACKENDS", "SessionBackend", "SessionInfo", "SessionSpec", "get_backend"]


def get_backend(name: str, paths: Paths) -> SessionBackend:
    """Return the backend called ``name``, configured for ``paths``."""
    if name == "tmux":
        from supervisor.core.sessions.tmux import TmuxBackend

        return TmuxBackend(socket_name=paths.tmux_socket)
    if name == "screen":
        from supervisor.core.sessions.screen import ScreenBackend

        return ScreenBackend(screenrc=paths.screenrc)
    msg = f"backend '{name}' is not known. Choose one of: {', '.join(KNOWN_BACKENDS)}."
    raise SupervisorError(msg)

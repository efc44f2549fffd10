"""The names of an instance's states, in one place for the core, the agent, the fleet and the CLI.

A :class:`State` is a ``str``, so records, JSON and comparisons with plain strings keep working.
"""

from __future__ import annotations

import enum


class State(str, enum.Enum):
    """What ``ls``, state records, ``fleet ls`` and the dashboard say an instance is doing."""

    RUNNING = "running"
    STARTING = "starting"
    WAITING_LOGIN = "waiting-login"
    STOPPED = "stopped"
    EXITED = "exited"
    CRASHED = "crashed"
    FATAL = "fatal"
    INSTALLING = "installing"
    INSTALL_FAILED = "install-failed"

    def __str__(self) -> str:
        return str(self.value)


ALIVE = frozenset({State.RUNNING, State.STARTING, State.WAITING_LOGIN})
"""The bot's process is up (ready or not)."""
BAD = frozenset({State.CRASHED, State.EXITED, State.FATAL, State.INSTALL_FAILED})
"""Needs a person's look."""

BACKENDS = ("tmux", "screen")
"""The session backends, by the name a recipe and ``--backend`` use."""

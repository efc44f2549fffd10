"""Every default location of bot-supervisor; nothing else computes paths.

Imports nothing of ours. Environment: ``SUPERVISOR_HOME`` (state root),
``SUPERVISOR_TMUX_SOCKET`` (tmux ``-L`` name) and screen's own ``SCREENDIR``.
"""

from __future__ import annotations

import os
import typing as t
from pathlib import Path

DEFAULT_TMUX_SOCKET = "bot-supervisor"
SESSION_PREFIX = "sup-"


def default_home() -> Path:
    """Return ``$SUPERVISOR_HOME`` or ``~/.local/share/bot-supervisor``."""
    env = os.environ.get("SUPERVISOR_HOME")
    if env:
        return Path(env).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "bot-supervisor"


def builtin_recipes_dir() -> Path:
    """Return the folder of the recipes shipped with the package.

    In a wheel they live at ``supervisor/recipes``; in a source checkout
    (editable install) they are the repository's top-level ``recipes/``.
    """
    import importlib.resources  # only recipe lookups need it

    packaged = Path(str(importlib.resources.files("supervisor"))) / "recipes"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "recipes"


class Paths(t.NamedTuple):
    """The files and folders under one ``SUPERVISOR_HOME`` (immutable; a tuple, not a dataclass: ``ls`` loads fast)."""

    home: Path
    tmux_socket: str = DEFAULT_TMUX_SOCKET

    @classmethod
    def from_env(cls, home: Path | None = None, tmux_socket: str | None = None) -> Paths:
        """Build from explicit values, falling back to the environment."""
        return cls(
            home=(home or default_home()).expanduser().resolve(),
            tmux_socket=tmux_socket or os.environ.get("SUPERVISOR_TMUX_SOCKET") or DEFAULT_TMUX_SOCKET,
        )

    @property
    def registry(self) -> Path:
        """The instance registry (versioned JSON)."""
        return self.home / "registry.json"

    @property
    def registry_lock(self) -> Path:
        """The lock file guarding registry read-modify-write cycles."""
        return self.home / "registry.lock"

    @property
    def user_recipes(self) -> Path:
        """Recipes the user keeps next to the state."""
        return self.home / "recipes"

    @property
    def mirrors(self) -> Path:
        """Bare object mirrors shared by all instances of one repository."""
        return self.home / "mirrors"

    @property
    def origins(self) -> Path:
        """Git origins made from bots shipped with the package (``builtin:``)."""
        return self.home / "origins"

    @property
    def screenrc(self) -> Path:
        """The screen configuration our sessions start with."""
        return self.home / "screenrc"

    @property
    def agent_config(self) -> Path:
        """The agent's TOML configuration file."""
        return self.home / "agent.toml"

    @property
    def dashboard_config(self) -> Path:
        """The dashboard's settings (password hash) file."""
        return self.home / "dashboard.toml"

    @property
    def dashboard_db(self) -> Path:
        """The dashboard's SQLite history of performance and console lines."""
        return self.home / "dashboard.sqlite"

    @property
    def audit_log(self) -> Path:
        """The agent's append-only record of remote commands."""
        return self.home / "audit.log"

    @property
    def agent_log(self) -> Path:
        """The agent's own log (rotated, as the audit log)."""
        return self.home / "agent.log"

    @property
    def agent_socket(self) -> Path:
        """The running agent's local socket: ``ls`` asks it for its snapshot before listing itself."""
        return self.home / "agent.sock"

    @property
    def events_config(self) -> Path:
        """The webhook receiver's routes and settings (TOML)."""
        return self.home / "events.toml"

    @property
    def events_journal(self) -> Path:
        """The webhook receiver's SQLite journal of accepted external events."""
        return self.home / "events.sqlite"

    def instance_dir(self, name: str) -> Path:
        """Per-instance state: run script, logs, exit record."""
        return self.home / "instances" / name

    def default_checkout(self, name: str) -> Path:
        """Where ``new`` clones an instance when no ``--dir`` is given."""
        return self.instance_dir(name) / "checkout"

    def run_script(self, name: str) -> Path:
        """Return the wrapper script a session runs."""
        return self.instance_dir(name) / "run.sh"

    def exit_file(self, name: str) -> Path:
        """Written by the wrapper when the bot exits: ``<rc> <epoch>``."""
        return self.instance_dir(name) / "exit"

    def console_log(self, name: str) -> Path:
        """Everything the session printed (rotated by size)."""
        return self.instance_dir(name) / "console.log"

    def install_log(self, name: str) -> Path:
        """Output of clone, checkout and install steps."""
        return self.instance_dir(name) / "install.log"

    def secrets_dir(self, name: str) -> Path:
        """Per-instance secrets (mode 700), one file per key (mode 600)."""
        return self.instance_dir(name) / "secrets"

    def secret_file(self, name: str, key: str) -> Path:
        """Return the file holding one secret (the run wrapper reads it into the environment)."""
        return self.secrets_dir(name) / key

    def readiness_file(self, name: str) -> Path:
        """Return the record of what the console showed since the last launch (login prompt, ready line)."""
        return self.instance_dir(name) / "readiness.json"

    def config_snapshot(self, name: str) -> Path:
        """Return the folder holding a copy of the bot's config files taken before ``update``."""
        return self.instance_dir(name) / "config-snapshot"

    def instance_lock(self, name: str) -> Path:
        """Held while one process installs, starts or stops the instance."""
        return self.instance_dir(name) / ".lock"

    def console_lock(self, name: str) -> Path:
        """Held while one process types into the bot's console (and reads the answer)."""
        return self.instance_dir(name) / ".console.lock"

    def console_pending(self, name: str) -> Path:
        """Return where the line typed last whose answer has not been seen to end is noted (its offset, when)."""
        return self.instance_dir(name) / ".console.pending"


def ensure_dir(path: Path, mode: int = 0o755) -> Path:
    """Create ``path`` with parents if missing and return it."""
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    return path


StrPath: t.TypeAlias = "str | os.PathLike[str]"

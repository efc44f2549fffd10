"""The exception hierarchy every module raises; imports nothing of ours.

Exit codes of the ``supervisor`` command:

====  ==========================================================
0     success
1     any :class:`SupervisorError` (the message says what to do)
2     usage error (click's own)
3     :class:`InstanceNotRunning` (LSB "program is not running")
130   interrupted by Ctrl-C
====  ==========================================================

Each class has a stable ``code`` string, used in ``--json`` output and in
MQTT replies, so scripts never have to parse the message.
"""

from __future__ import annotations

import errno
import typing as t


class SupervisorError(Exception):
    """Base of every error the user should see as one clear line."""

    exit_code: t.ClassVar[int] = 1
    code: t.ClassVar[str] = "error"

    def to_dict(self) -> dict[str, str]:
        """Return the error as the ``{"code", "message"}`` pair replies carry."""
        return {"code": self.code, "message": str(self)}


class RecipeError(SupervisorError):
    """A recipe is unknown, unreadable or breaks the schema."""

    code = "recipe_error"


class RecipeNotFound(RecipeError):
    """No recipe of that name or path exists."""

    code = "recipe_not_found"

    def __init__(self, name: str, known: t.Sequence[str]) -> None:
        choices = ", ".join(sorted(known)) or "none"
        msg = (
            f"recipe '{name}' not found. Known recipes: {choices}. "
            "Run 'supervisor recipes' or pass a file with -r PATH."
        )
        super().__init__(msg)
        self.name = name


class InvalidName(SupervisorError):
    """An instance name breaks the ``[a-z0-9][a-z0-9_-]*`` rule."""

    code = "invalid_name"

    def __init__(self, name: str) -> None:
        msg = (
            f"instance name '{name}' is not valid. Use lowercase letters, digits, "
            "'-' and '_', starting with a letter or digit (at most 48 characters)."
        )
        super().__init__(msg)
        self.name = name


class RegistryWriteError(SupervisorError):
    """The instance registry could not be written; nothing was changed."""

    code = "registry_write_failed"

    def __init__(self, path: t.Any, error: OSError) -> None:
        msg = (
            f"registry '{path}': cannot be written ({error.strerror or error}). "
            f"{os_error_hint(error)} Nothing was recorded."
        )
        super().__init__(msg)
        self.path = path
        self.errno = error.errno


def os_error_hint(error: OSError) -> str:
    """Return what the user can do about ``error`` (disk full, permissions, read-only...)."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "Free some disk space and try again."
    if error.errno in (errno.EACCES, errno.EPERM):
        return "Check the permissions (and attributes) of that file and its folder."
    if error.errno == errno.EROFS:
        return "The file system is read-only; remount it read-write or choose another SUPERVISOR_HOME."
    return "Check that file and its folder, then try again."


class InstanceError(SupervisorError):
    """Something is wrong with one instance."""

    code = "instance_error"


class InstanceNotFound(InstanceError):
    """No instance of that name is recorded."""

    code = "instance_not_found"

    def __init__(self, name: str) -> None:
        msg = f"instance '{name}' not found. Run 'supervisor ls' to see instances."
        super().__init__(msg)
        self.name = name


class InstanceExists(InstanceError):
    """An instance of that name is already recorded."""

    code = "instance_exists"

    def __init__(self, name: str) -> None:
        msg = f"instance '{name}' already exists. Pick another name or remove it with 'supervisor rm {name}'."
        super().__init__(msg)
        self.name = name


class InstanceNotRunning(InstanceError):
    """The action needs a running bot and this one is not running."""

    exit_code = 3
    code = "instance_not_running"

    def __init__(self, name: str, state: str = "stopped") -> None:
        msg = f"instance '{name}' is not running (state: {state}). Start it with 'supervisor start {name}'."
        super().__init__(msg)
        self.name = name


class InstanceNotReady(InstanceError):
    """The bot's process is alive but it is not up yet (``starting`` or ``waiting-login``)."""

    code = "instance_not_ready"

    def __init__(self, name: str, state: str) -> None:
        if state == "waiting-login":
            msg = f"instance '{name}' is waiting at its login dialog. Log in with 'supervisor attach {name}' first."
        else:
            msg = f"instance '{name}' is still {state}: its ready line has not been seen yet. Try again shortly."
        super().__init__(msg)
        self.name = name


class InstanceRunning(InstanceError):
    """The action needs a stopped bot and this one is running."""

    code = "instance_running"

    def __init__(self, name: str, action: str) -> None:
        msg = (
            f"instance '{name}' is running; refusing to {action} it. "
            f"Stop it first with 'supervisor stop {name}' or pass --force."
        )
        super().__init__(msg)
        self.name = name


class InstanceBusy(InstanceError):
    """Another ``supervisor`` process is installing or changing this instance."""

    code = "instance_busy"


class ConsoleBusy(InstanceBusy):
    """The bot has not yet answered a line typed before: nothing more is typed until it has."""

    code = "console_busy"

    def __init__(self, name: str, seconds: float) -> None:
        msg = (
            f"instance '{name}': its console has not answered the line typed {seconds:.1f} s ago; "
            "nothing was typed, so no answer gets mixed with it. Try again in a moment, "
            f"or look with 'supervisor tail {name}'."
        )
        super().__init__(msg)
        self.name = name


class SecretError(SupervisorError):
    """A secret's key or value is not usable, or its file cannot be written."""

    code = "secret_error"


class SecretMissing(InstanceError):
    """The recipe needs a secret that is not stored for this instance."""

    code = "secret_missing"

    def __init__(self, name: str, missing: t.Sequence[tuple[str, str]]) -> None:
        keys = ", ".join(f"'{key}' (for {env})" for env, key in missing)
        first = missing[0][1]
        msg = (
            f"instance '{name}' cannot start: secret {keys} is not set. "
            f"Set it with 'supervisor secret set {name} {first}' (the value is read from stdin)."
        )
        super().__init__(msg)
        self.name = name


class InstallError(SupervisorError):
    """A clone, fetch, checkout or install step failed; keeps the log tail."""

    code = "install_failed"

    def __init__(self, message: str, *, step: str | None = None, log_tail: str = "") -> None:
        super().__init__(message)
        self.step = step
        self.log_tail = log_tail


class UpdateRolledBack(InstallError):
    """The new commit installed but did not come up; the old code and config were put back."""

    code = "update_rolled_back"


class SessionError(SupervisorError):
    """A tmux or screen operation failed."""

    code = "session_error"


class UnsafeConsoleText(SessionError):
    """Text meant to be typed into a console holds control characters."""

    code = "unsafe_console_text"

    def __init__(self, what: str, found: t.Sequence[str]) -> None:
        # found: U+XXXX names; U+D800..U+DFFF are lone surrogates, what an undecodable byte becomes.
        invalid = [name for name in found if len(name) == 6 and "U+D800" <= name <= "U+DFFF"]
        controls = [name for name in found if name not in invalid]
        parts = [f"holds control characters ({', '.join(controls)})"] if controls else []
        if invalid:
            why = "a lone surrogate, from an undecodable byte or half a \\u pair"
            parts.append(f"is not valid UTF-8 ({', '.join(invalid)}: {why})")
        msg = (
            f"{what} {' and '.join(parts)}; console text must be printable. "
            "To press keys on purpose use 'supervisor send --keys'."
        )
        super().__init__(msg)
        self.found = list(found)


class BackendUnavailable(SessionError):
    """The tmux or screen binary is not installed."""

    code = "backend_unavailable"

    def __init__(self, backend: str) -> None:
        msg = (
            f"backend '{backend}': the '{backend}' program is not installed. "
            f"Install it (for example 'apt-get install {backend}') or use --backend with another one."
        )
        super().__init__(msg)
        self.backend = backend


class ReadyTimeout(SessionError):
    """The bot did not print its readiness pattern in time."""

    code = "ready_timeout"


class AgentError(SupervisorError):
    """The agent cannot reach its broker, or a request is malformed."""

    code = "agent_error"


class AuthError(AgentError):
    """A request's signature is missing, wrong, expired or replayed."""

    code = "unauthorized"

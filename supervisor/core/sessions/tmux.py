"""The tmux session backend, driven through libtmux on a private socket.

The only module that imports :mod:`libtmux`; its exceptions never leave here.
libtmux loads lazily: the read-only queries every ``ls`` makes (``list-panes``,
``has-session``) are single plain ``tmux`` calls through :mod:`supervisor._proc`,
which keeps the command's start-up short.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import time
import typing as t
from pathlib import Path

from supervisor import _proc
from supervisor.consoletext import check_console_text, parse_key
from supervisor.core.sessions.base import SessionInfo
from supervisor.errors import BackendUnavailable, SessionError

if t.TYPE_CHECKING:
    import libtmux
    from libtmux.common import tmux_cmd

logger = logging.getLogger(__name__)

_FIELDS = (
    "session_name",
    "pane_pid",
    "session_created",
    "session_attached",
    "window_index",
    "pane_index",
)
_LIST_FORMAT = "\t".join(f"#{{{field}}}" for field in _FIELDS)


def _arg(value: str) -> str:
    r"""Protect an argument from tmux's command-line parser.

    tmux treats any argument that *ends* in ``;`` as a command separator and
    turns a trailing ``\\;`` into a plain ``;``.
    """
    if value.endswith(";"):
        return value[:-1] + "\\;"
    return value


def _format_literal(value: str) -> str:
    """Escape ``#`` in an argument tmux expands as a format (``-c``, ``pipe-pane``)."""
    return _arg(value.replace("#", "##"))


def _exact(name: str) -> str:
    """Return a target matching session ``name`` exactly (no prefix match)."""
    return f"={name}"


def _pane(name: str) -> str:
    """Return the target of the active pane of session ``name``."""
    return f"={name}:"


class TmuxBackend:
    """Run sessions on one tmux server, chosen by socket name (``tmux -L``).

    ``SessionInfo.pid`` is the pane pid of the session's first pane. The
    command runs as ``exec <argv>`` under tmux's shell, so that pid is the
    program itself.
    """

    name = "tmux"

    def __init__(self, socket_name: str) -> None:
        self.socket_name = socket_name
        self._server_object: libtmux.Server | None = None

    @property
    def _server(self) -> libtmux.Server:
        if self._server_object is None:
            import libtmux

            self._server_object = libtmux.Server(socket_name=self.socket_name)
        return self._server_object

    def _query(self, *args: str) -> tuple[int, list[str]]:
        """Run a read-only tmux command without libtmux; ``(-1, [])`` when tmux cannot run."""
        try:
            proc = _proc.run(["tmux", "-L", self.socket_name, *args], timeout=10.0)
        except (OSError, _proc.TimeoutExpired):
            logger.debug("tmux %s failed", args[0], exc_info=True)
            return -1, []
        if proc.returncode != 0:
            # "no server running", "error connecting to ...", "server exited ..."
            logger.debug("tmux %s: %s", args[0], proc.stderr.strip())
        return proc.returncode, proc.stdout.splitlines()

    def _cmd(self, *args: str) -> tmux_cmd:
        """Run one tmux command line on our socket, translating libtmux errors."""
        from libtmux import exc as tmux_exc

        try:
            return self._server.cmd(*args)
        except tmux_exc.TmuxCommandNotFound as e:
            raise BackendUnavailable(self.name) from e
        except (tmux_exc.LibTmuxException, OSError) as e:
            msg = f"backend 'tmux': running '{args[0]}' failed: {e}. Check that tmux works on this machine."
            raise SessionError(msg) from e

    def is_available(self) -> bool:
        """Return whether the tmux binary is on ``PATH``."""
        return shutil.which("tmux") is not None

    def list_sessions(self) -> dict[str, SessionInfo]:
        """Return every session on our socket, from a single ``list-panes -a``.

        A missing binary or a dead server means "no sessions".
        """
        returncode, lines = self._query("list-panes", "-a", "-F", _LIST_FORMAT)
        if returncode != 0:
            return {}
        best: dict[str, tuple[tuple[int, int], SessionInfo]] = {}
        for line in lines:
            parts = line.split("\t")
            if len(parts) != len(_FIELDS):
                continue
            name, pane_pid, created, attached, window_index, pane_index = parts
            try:
                order = (int(window_index), int(pane_index))
            except ValueError:
                order = (0, 0)
            if name in best and best[name][0] <= order:
                continue
            info = SessionInfo(
                name=name,
                backend=self.name,
                pid=int(pane_pid) if pane_pid.isdigit() else None,
                created=float(created) if created.isdigit() else None,
                attached=attached.isdigit() and int(attached) > 0,
                address=name,
            )
            best[name] = (order, info)
        return {name: info for name, (_, info) in best.items()}

    def has_session(self, name: str) -> bool:
        """Return whether a session of exactly that name exists (not if no server)."""
        returncode, _ = self._query("has-session", "-t", _arg(_exact(name)))
        return returncode == 0

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
        """Start ``argv`` in a new detached session, logging its output to ``log_path``.

        One tmux invocation creates the session, attaches ``pipe-pane`` and
        turns ``remain-on-exit`` off, so the log sees the program's first byte.
        It prints the pane pid too, so no second query is needed; a program
        that ends at once shows up as a missing session afterwards.

        Raises
        ------
        SessionError
            The name is taken or ``cwd`` is missing.
        BackendUnavailable
            tmux is not installed.
        """
        if not argv:
            msg = f"session '{name}': no command given. Pass the program to run."
            raise SessionError(msg)
        if not cwd.is_dir():
            msg = f"session '{name}': working directory '{cwd}' does not exist. Create it or fix the recipe."
            raise SessionError(msg)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env_args: list[str] = []
        for key, value in (env or {}).items():
            env_args += ["-e", _arg(f"{key}={value}")]
        command = "exec " + shlex.join(argv)
        pipe = "cat >> " + shlex.quote(str(log_path))
        proc = self._cmd(
            "new-session", "-d", "-s", name, "-x", str(width), "-y", str(height),
            "-c", _format_literal(str(cwd)), *env_args,
            "-P", "-F", "#{pane_pid}", _arg(command),
            ";", "pipe-pane", "-o", "-t", _pane(name), _format_literal(pipe),
            ";", "set-option", "-w", "-t", _pane(name), "remain-on-exit", "off",
        )  # fmt: skip
        if proc.returncode != 0:
            detail = " ".join(proc.stderr)
            if "duplicate session" in detail:
                msg = (
                    f"session '{name}' already exists on tmux socket "
                    f"'{self.socket_name}'. Stop it or pick another name."
                )
            else:
                detail = detail or f"exit {proc.returncode}"
                msg = f"session '{name}': tmux new-session failed: {detail}."
            raise SessionError(msg)
        printed = proc.stdout[0].strip() if proc.stdout else ""
        return SessionInfo(
            name=name,
            backend=self.name,
            pid=int(printed) if printed.isdigit() else None,
            created=time.time(),
            address=name,
        )

    def kill_session(self, name: str) -> None:
        """Kill the session (tmux sends SIGHUP to its processes); missing is fine."""
        proc = self._cmd("kill-session", "-t", _arg(_exact(name)))
        if proc.returncode != 0 and self.has_session(name):
            msg = f"session '{name}': tmux kill-session failed: {' '.join(proc.stderr)}."
            raise SessionError(msg)

    def _require(self, name: str, proc: tmux_cmd, action: str) -> None:
        """Raise a clear :class:`SessionError` when ``proc`` failed."""
        if proc.returncode == 0:
            return
        if not self.has_session(name):
            msg = f"session '{name}' not found on tmux socket '{self.socket_name}'. Is the instance running?"
        else:
            msg = f"session '{name}': tmux {action} failed: {' '.join(proc.stderr)}."
        raise SessionError(msg)

    def send_line(self, name: str, text: str, *, enter: bool = True) -> None:
        """Type ``text`` literally into the session's pane, then press Enter.

        Raises
        ------
        SessionError
            ``text`` holds a control character, or the session does not exist.
        """
        check_console_text(text, what=f"text for session '{name}'")
        args: list[str] = []
        if text:
            args += ["send-keys", "-t", _pane(name), "-l", "--", _arg(text)]  # "--": text may start with "-"
        if enter:
            args += [";"] if args else []
            args += ["send-keys", "-t", _pane(name), "Enter"]
        if not args:
            return
        self._require(name, self._cmd(*args), "send-keys")

    def send_keys(self, name: str, keys: t.Sequence[str]) -> None:
        """Press ``keys`` (tmux key names, checked again here) in the session's pane."""
        names = [parse_key(key) for key in keys]
        if names:
            self._require(name, self._cmd("send-keys", "-t", _pane(name), *names), "send-keys")

    def capture(self, name: str, lines: int = 50) -> str:
        """Return the last ``lines`` lines of the pane and its scrollback."""
        proc = self._cmd("capture-pane", "-p", "-J", "-S", f"-{max(lines, 1)}", "-t", _pane(name))
        self._require(name, proc, "capture-pane")
        return _tail([line.rstrip() for line in proc.stdout], lines)

    def _socket_path(self) -> Path:
        """Return where tmux puts the socket for ``-L socket_name``."""
        base = os.environ.get("TMUX_TMPDIR") or "/tmp"  # tmux's own default
        return Path(base) / f"tmux-{os.getuid()}" / self.socket_name

    def attach_command(self, name: str) -> tuple[list[str], dict[str, str] | None]:
        """Return ``switch-client`` inside our tmux server, else ``attach-session``.

        Attaching from inside another tmux works because ``TMUX`` is dropped
        from the environment returned with the argv.
        """
        inside = os.environ.get("TMUX", "")
        if inside:
            current = Path(inside.split(",", 1)[0])
            if current.resolve() == self._socket_path().resolve():
                return [
                    "tmux",
                    "-L",
                    self.socket_name,
                    "switch-client",
                    "-t",
                    _exact(name),
                ], None
        env = {key: value for key, value in os.environ.items() if key != "TMUX"}
        return [
            "tmux",
            "-L",
            self.socket_name,
            "attach-session",
            "-t",
            _exact(name),
        ], env


def _tail(lines: list[str], count: int) -> str:
    """Drop trailing blank lines and return the last ``count`` lines joined."""
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines[-count:] if count > 0 else [])

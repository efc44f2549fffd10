"""The tmux session backend, on a private socket (``tmux -L``).

libtmux is the object model: :attr:`TmuxBackend.server`, and the pane that ``send_keys`` and
``capture`` act on, found through it. The paths that ``ls``, ``start --all`` and every console
line take (listing, launching, typing a line, killing) stay one plain ``tmux`` call through
:mod:`supervisor._proc` with a timeout: ``bench/libraries.py`` measures libtmux's listing at 9x
the plain one for 200 sessions, plus ~60-120 ms to import (README, "Why some paths skip a library").
This is the only module that imports libtmux, and its exceptions never leave here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import shutil
import time
import typing as t
from pathlib import Path

from supervisor import _proc
from supervisor.consoletext import check_console_text, parse_key
from supervisor.core.sessions.base import SessionInfo, SessionSpec
from supervisor.errors import BackendUnavailable, SessionError

if t.TYPE_CHECKING:
    import libtmux

logger = logging.getLogger(__name__)

_TIMEOUT = 10.0
_FIELDS = (
    "session_name",
    "pane_pid",
    "session_created",
    "session_attached",
    "window_index",
    "pane_index",
)
_LIST_FORMAT = "\t".join(f"#{{{field}}}" for field in _FIELDS)
_BATCH_BYTES = 8000
"""Most argv bytes in one tmux command line; the client refuses a command message over 16 KiB."""


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


@dataclasses.dataclass(frozen=True)
class _Done:
    """What one tmux command line returned."""

    returncode: int
    stdout: list[str]
    stderr: list[str]


class TmuxBackend:
    """Run sessions on one tmux server, chosen by socket name (``tmux -L``).

    ``SessionInfo.pid`` is the pane pid of the session's first pane. tmux
    runs the argv directly (or one lone command as ``exec`` under its shell),
    so that pid is the program itself.
    """

    name = "tmux"

    def __init__(self, socket_name: str) -> None:
        self.socket_name = socket_name
        self._server_object: libtmux.Server | None = None

    @property
    def server(self) -> libtmux.Server:
        """The libtmux object model of our server (sessions, windows, panes), for callers that walk it."""
        if self._server_object is None:
            import libtmux

            self._server_object = libtmux.Server(socket_name=self.socket_name)
        return self._server_object

    def _tmux(self, *args: str) -> _Done:
        """Run one tmux command line on our socket; a missing binary or a hang becomes our error."""
        try:
            proc = _proc.run(["tmux", "-L", self.socket_name, *args], timeout=_TIMEOUT)
        except FileNotFoundError as e:
            raise BackendUnavailable(self.name) from e
        except (OSError, _proc.TimeoutExpired) as e:
            msg = f"backend 'tmux': running '{args[0]}' failed: {e}. Check that tmux works on this machine."
            raise SessionError(msg) from e
        return _Done(proc.returncode, proc.stdout.splitlines(), [line for line in proc.stderr.splitlines() if line])

    def _query(self, *args: str) -> _Done:
        """Run a read-only tmux command; a missing binary, a hang or no server give returncode -1 or tmux's."""
        try:
            done = self._tmux(*args)
        except SessionError:
            logger.debug("tmux %s failed", args[0], exc_info=True)
            return _Done(-1, [], [])
        if done.returncode != 0:
            # "no server running", "error connecting to ...", "server exited ..."
            logger.debug("tmux %s: %s", args[0], " ".join(done.stderr))
        return done

    def is_available(self) -> bool:
        """Return whether the tmux binary is on ``PATH``."""
        return shutil.which("tmux") is not None

    def list_sessions(self) -> dict[str, SessionInfo]:
        """Return every session on our socket, from a single ``list-panes -a``.

        A missing binary or a dead server means "no sessions".
        """
        done = self._query("list-panes", "-a", "-F", _LIST_FORMAT)
        if done.returncode != 0:
            return {}
        best: dict[str, tuple[tuple[int, int], SessionInfo]] = {}
        for line in done.stdout:
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
        return self._query("has-session", "-t", _arg(_exact(name))).returncode == 0

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
        spec = SessionSpec(name, argv, cwd, log_path, env)
        return self._start([spec], [self._launch_args(spec, width, height)])[0]

    def new_sessions(self, specs: t.Sequence[SessionSpec]) -> list[SessionInfo]:
        """Start many sessions with one tmux command line per ~8 KB of arguments (``;``-chained).

        Raises
        ------
        SessionError
            At the first session that cannot start (tmux runs none of the commands after a failed one).
        BackendUnavailable
            tmux is not installed.
        """
        lines = [self._launch_args(spec) for spec in specs]
        started: list[SessionInfo] = []
        first = 0
        while first < len(specs):
            size = 0
            last = first
            while last < len(specs) and (last == first or size + _size(lines[last]) <= _BATCH_BYTES):
                size += _size(lines[last])
                last += 1
            started += self._start(specs[first:last], lines[first:last])
            first = last
        return started

    def _launch_args(self, spec: SessionSpec, width: int = 200, height: int = 50) -> list[str]:
        """Return the commands that start one session (``new-session; pipe-pane; set-option``); check its spec."""
        name = spec.name
        if not spec.argv:
            msg = f"session '{name}': no command given. Pass the program to run."
            raise SessionError(msg)
        if not spec.cwd.is_dir():
            msg = f"session '{name}': working directory '{spec.cwd}' does not exist. Create it or fix the recipe."
            raise SessionError(msg)
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        env_args: list[str] = []
        for key, value in (spec.env or {}).items():
            env_args += ["-e", _arg(f"{key}={value}")]
        # Two or more arguments are run directly (tmux 3.0+); one goes through the shell, as exec.
        command = (
            [_arg(arg) for arg in spec.argv] if len(spec.argv) > 1 else [_arg("exec " + shlex.quote(spec.argv[0]))]
        )
        pipe = "exec cat >> " + shlex.quote(str(spec.log_path))  # exec: no shell left waiting per session
        return [
            "new-session", "-d", "-s", name, "-x", str(width), "-y", str(height),
            "-c", _format_literal(str(spec.cwd)), *env_args,
            "-P", "-F", "#{pane_pid}", *command,
            ";", "pipe-pane", "-o", "-t", _pane(name), _format_literal(pipe),
            ";", "set-option", "-w", "-t", _pane(name), "remain-on-exit", "off",
        ]  # fmt: skip

    def _start(self, specs: t.Sequence[SessionSpec], lines: t.Sequence[list[str]]) -> list[SessionInfo]:
        """Run the launch commands of ``specs`` as one command line; return their infos, or raise at a failure."""
        args: list[str] = []
        for line in lines:
            args += [";", *line] if args else line
        done = self._tmux(*args)
        printed = [line.strip() for line in done.stdout]
        now = time.time()
        started = [
            SessionInfo(
                name=spec.name,
                backend=self.name,
                pid=int(pid) if pid.isdigit() else None,
                created=now,
                address=spec.name,
            )
            for spec, pid in zip(specs, printed, strict=False)
        ]
        if done.returncode == 0:
            return started
        # tmux stops at the first failing command: every session that printed its pid runs.
        failed = specs[min(len(started), len(specs) - 1)].name
        detail = " ".join(done.stderr)
        if "duplicate session" in detail:
            msg = (
                f"session '{failed}' already exists on tmux socket '{self.socket_name}'. Stop it or pick another name."
            )
        else:
            detail = detail or f"exit {done.returncode}"
            msg = f"session '{failed}': tmux new-session failed: {detail}."
        raise SessionError(msg)

    def kill_session(self, name: str) -> None:
        """Kill the session (tmux sends SIGHUP to its processes); missing is fine."""
        done = self._tmux("kill-session", "-t", _arg(_exact(name)))
        if done.returncode != 0 and self.has_session(name):
            msg = f"session '{name}': tmux kill-session failed: {' '.join(done.stderr)}."
            raise SessionError(msg)

    def _require(self, name: str, done: _Done, action: str) -> None:
        """Raise a clear :class:`SessionError` when ``done`` failed."""
        if done.returncode == 0:
            return
        if not self.has_session(name):
            msg = f"session '{name}' not found on tmux socket '{self.socket_name}'. Is the instance running?"
        else:
            msg = f"session '{name}': tmux {action} failed: {' '.join(done.stderr)}."
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
        self._require(name, self._tmux(*args), "send-keys")

    def _active_pane(self, name: str) -> libtmux.Pane:
        """Return the active pane of session ``name`` from libtmux's object model.

        Raises
        ------
        SessionError
            No such session (or no server), or tmux failed.
        BackendUnavailable
            tmux is not installed.
        """
        import libtmux.exc

        try:
            session = self.server.sessions.get(session_name=name, default=None)
            pane = session.active_pane if session is not None else None
        except libtmux.exc.TmuxCommandNotFound as e:
            raise BackendUnavailable(self.name) from e
        except libtmux.exc.LibTmuxException as e:
            msg = f"session '{name}': tmux could not be read ({e}). Check that tmux works on this machine."
            raise SessionError(msg) from e
        if pane is None:
            msg = f"session '{name}' not found on tmux socket '{self.socket_name}'. Is the instance running?"
            raise SessionError(msg)
        return pane

    def _pane_command(self, name: str, pane: libtmux.Pane, *args: str) -> list[str]:
        """Run one tmux command on ``pane`` through libtmux and return its output lines; failures raise."""
        import libtmux.exc

        try:
            done = pane.cmd(*args)
        except libtmux.exc.LibTmuxException as e:
            msg = f"session '{name}': tmux {args[0]} failed: {e}."
            raise SessionError(msg) from e
        if done.returncode != 0:
            detail = " ".join(line for line in done.stderr if line) or f"exit {done.returncode}"
            msg = f"session '{name}': tmux {args[0]} failed: {detail}."
            raise SessionError(msg)
        return list(done.stdout)

    def send_keys(self, name: str, keys: t.Sequence[str]) -> None:
        """Press ``keys`` (tmux key names, checked again here) in the session's active pane."""
        names = [parse_key(key) for key in keys]
        if names:
            self._pane_command(name, self._active_pane(name), "send-keys", *names)

    def capture(self, name: str, lines: int = 50) -> str:
        """Return the last ``lines`` lines of the session's active pane and its scrollback."""
        pane = self._active_pane(name)
        captured = self._pane_command(name, pane, "capture-pane", "-p", "-J", "-S", f"-{max(lines, 1)}")
        return _tail([line.rstrip() for line in captured], lines)

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


def _size(args: t.Sequence[str]) -> int:
    """Return how many bytes ``args`` take in tmux's command message (each with its NUL, plus the ``;``)."""
    return sum(len(arg.encode()) + 1 for arg in args) + 2


def _tail(lines: list[str], count: int) -> str:
    """Drop trailing blank lines and return the last ``count`` lines joined."""
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines[-count:] if count > 0 else [])

"""The GNU screen session backend (4.06+), driven through :mod:`supervisor._proc`.

Honours ``SCREENDIR`` from the environment; imports no third-party library.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import typing as t
from pathlib import Path

from supervisor import _proc
from supervisor.consoletext import check_console_text, key_bytes, parse_key
from supervisor.core.sessions.base import SessionInfo, SessionSpec
from supervisor.errors import BackendUnavailable, SessionError

logger = logging.getLogger(__name__)

_START_TIMEOUT = 5.0
_FILE_TIMEOUT = 5.0
_POLL_INTERVAL = 0.02
_PROC = Path("/proc")

# screen's default log flush is every 10 s, far too slow to follow a bot's log.
SCREENRC = """\
# Written by bot-supervisor for its screen sessions; edit freely.
startup_message off
logfile flush 1
defscrollback 10000
defutf8 on
"""

# "\t5384.sup-x\t(11/25/26 15:04:14)\t(Detached)"; the date is absent on some builds.
_LS_LINE = re.compile(r"^\t(?P<pid>\d+)\.(?P<name>\S+)\t(?:\((?P<date>[^)]*)\)\t)?\((?P<state>[^)]*)\)")


class ScreenBackend:
    """Run each session as its own GNU screen server under ``SCREENDIR``.

    ``SessionInfo.pid`` is the child of the ``SCREEN`` server process: screen
    starts the argv directly (no shell), so it is the program itself.
    ``SessionInfo.address`` is ``<SCREEN pid>.<name>``, which every command
    here targets so a name prefix never matches another session.

    ``capture`` reads a ``hardcopy``, which keeps only Latin-1 characters
    (screen 4 stores one byte per cell there); the log file keeps everything.
    Detached screen windows are 80x24 until a terminal attaches: screen has
    no way to size a display-less window, so ``width``/``height`` are ignored.
    """

    name = "screen"

    def __init__(self, screenrc: Path) -> None:
        self.screenrc = screenrc

    def _env(self, extra: t.Mapping[str, str] | None = None) -> dict[str, str]:
        """Return our environment (with ``SCREENDIR``) minus an outer ``STY``."""
        env = {key: value for key, value in os.environ.items() if key != "STY"}
        env.update(extra or {})
        return env

    def _run(
        self,
        *args: str,
        env: t.Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``screen ARGS``; a missing binary or a hang becomes our error."""
        try:
            return _proc.run(["screen", *args], env=env or self._env(), cwd=cwd, timeout=10.0)
        except FileNotFoundError as e:
            raise BackendUnavailable(self.name) from e
        except subprocess.TimeoutExpired as e:
            msg = f"backend 'screen': 'screen {args[0]}' did not answer within 10 s. Check 'screen -ls'."
            raise SessionError(msg) from e

    def is_available(self) -> bool:
        """Return whether the screen binary is on ``PATH``."""
        return shutil.which("screen") is not None

    def list_sessions(self) -> dict[str, SessionInfo]:
        """Return every live session under ``SCREENDIR``, from a single ``screen -ls``.

        A missing binary, a missing ``SCREENDIR`` or no sessions at all give ``{}``.
        A set ``SCREENDIR`` that does not exist holds no sessions, and is not
        asked about: ``screen -ls`` would create it, and a look must not write.
        """
        screendir = os.environ.get("SCREENDIR")
        if screendir and not Path(screendir).is_dir():
            return {}
        try:
            # C locale: the creation date is printed with strftime("%x %X").
            proc = _proc.run(["screen", "-ls"], env=self._env({"LC_ALL": "C"}), timeout=10.0)
        except (OSError, subprocess.TimeoutExpired):
            logger.debug("screen -ls failed", exc_info=True)
            return {}
        # screen -ls exits 1 with no sessions (and sometimes otherwise): parse anyway.
        found: list[tuple[int, str, float | None, bool]] = []
        for line in proc.stdout.splitlines():
            match = _LS_LINE.match(line)
            if match is None or match["state"].startswith("Dead"):
                continue
            attached = match["state"].lower().endswith("attached") and "detached" not in match["state"].lower()
            found.append((int(match["pid"]), match["name"], _parse_date(match["date"]), attached))
        if not found:
            return {}
        children = _ChildFinder()
        sessions: dict[str, SessionInfo] = {}
        for screen_pid, name, created, attached in found:
            info = SessionInfo(
                name=name,
                backend=self.name,
                pid=children.first_child(screen_pid),
                created=created,
                attached=attached,
                address=f"{screen_pid}.{name}",
            )
            older = sessions.get(name)
            if older is not None:
                newer = max(older, info, key=_age_key)
                logger.warning(
                    "screen has two sessions named %s (%s, %s); using the newer %s",
                    name,
                    older.address,
                    info.address,
                    newer.address,
                )
                info = newer
            sessions[name] = info
        return sessions

    def has_session(self, name: str) -> bool:
        """Return whether a live session of exactly that name exists."""
        return name in self.list_sessions()

    def _write_screenrc(self) -> None:
        """Create our screenrc if missing (an existing one is the user's to edit)."""
        if self.screenrc.exists():
            return
        self.screenrc.parent.mkdir(parents=True, exist_ok=True)
        self.screenrc.write_text(SCREENRC)

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
        """Start ``argv`` in a new detached screen session, logging to ``log_path``.

        ``-L -Logfile`` opens the log when the window is made, before the
        program runs. ``width`` and ``height`` are ignored (see the class).

        Raises
        ------
        SessionError
            The name is taken, ``cwd`` is missing, or the session did not come up.
        BackendUnavailable
            screen is not installed.
        """
        del width, height  # screen cannot size a detached window
        if not argv:
            msg = f"session '{name}': no command given. Pass the program to run."
            raise SessionError(msg)
        if not cwd.is_dir():
            msg = f"session '{name}': working directory '{cwd}' does not exist. Create it or fix the recipe."
            raise SessionError(msg)
        if not self.is_available():
            raise BackendUnavailable(self.name)
        # screen happily runs two sessions of one name; refuse here instead.
        existing = self.list_sessions().get(name)
        if existing is not None:
            msg = f"session '{name}' already exists as screen session {existing.address}. Stop it or pick another name."
            raise SessionError(msg)
        self._write_screenrc()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        args = [
            "-c",
            str(self.screenrc),
            "-L",
            "-Logfile",
            str(log_path),
            "-dmS",
            name,
            *argv,
        ]
        # screen passes its own environment (and cwd) on to the program.
        proc = self._run(*args, env=self._env(env), cwd=cwd)
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip()
            detail = detail or f"exit {proc.returncode}"
            msg = f"session '{name}': screen failed to start it: {detail}."
            raise SessionError(msg)
        # screen -dm returns before the socket exists and before the child is forked.
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            info = self.list_sessions().get(name)
            if info is not None and info.pid is not None:
                return info
            if time.monotonic() > deadline:
                if info is not None:
                    return info
                msg = f"session '{name}' did not come up within {_START_TIMEOUT:.0f} s or ended at once. See {log_path}"
                raise SessionError(msg)
            time.sleep(_POLL_INTERVAL)

    def new_sessions(self, specs: t.Sequence[SessionSpec]) -> list[SessionInfo]:
        """Start each session in turn (every screen session is its own server: there is nothing to batch)."""
        return [
            self.new_session(spec.name, spec.argv, cwd=spec.cwd, log_path=spec.log_path, env=spec.env) for spec in specs
        ]

    def kill_session(self, name: str) -> None:
        """Quit the session (screen sends SIGHUP to its window) and wait for it."""
        info = self.list_sessions().get(name)
        if info is None:
            return
        self._run("-S", info.address, "-X", "quit")
        deadline = time.monotonic() + _START_TIMEOUT
        while self._address_alive(info.address):
            if time.monotonic() > deadline:
                msg = f"session '{name}' ({info.address}) did not quit in time."
                raise SessionError(msg)
            time.sleep(_POLL_INTERVAL)

    def _address_alive(self, address: str) -> bool:
        """Return whether the screen session at ``address`` is still listed."""
        return any(info.address == address for info in self.list_sessions().values())

    def _address(self, name: str) -> str:
        """Return the ``<pid>.<name>`` of a live session, or raise SessionError."""
        info = self.list_sessions().get(name)
        if info is None:
            msg = _not_found(name)
            raise SessionError(msg)
        return info.address

    def _command(self, address: str, *command: str) -> None:
        """Send one command to window 0 of ``address`` and wait until screen has run it.

        ``-X`` returns before the server acts; screen handles its clients in
        order, so the answer to a following ``-Q number`` means it is done.
        """
        name = address.split(".", 1)[1]
        proc = self._run("-S", address, "-p", "0", "-X", *command)
        if proc.returncode != 0:
            detail = (proc.stdout or proc.stderr).strip()
            if "No screen session found" in detail:
                msg = _not_found(name)
            else:
                msg = f"session '{name}': screen {command[0]} failed: {detail}."
            raise SessionError(msg)
        self._sync(address)

    def _sync(self, address: str, timeout: float = 3.0) -> None:
        """Wait until screen has handled our previous command.

        A typed line may end the program and with it the session (``exit``);
        ``-Q`` then never gets its answer, so a vanished session counts as done.
        """
        screen_pid = int(address.split(".", 1)[0])
        try:
            client = _proc.spawn(
                ["screen", "-S", address, "-p", "0", "-Q", "number"],
                env=self._env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except FileNotFoundError as e:
            raise BackendUnavailable(self.name) from e
        deadline = time.monotonic() + timeout
        try:
            while client.poll() is None:
                if not Path(f"/proc/{screen_pid}").exists():
                    return
                if time.monotonic() > deadline:
                    msg = (
                        f"backend 'screen': session '{address}' did not answer within {timeout:g} s. "
                        "Check 'screen -ls'."
                    )
                    raise SessionError(msg)
                time.sleep(0.01)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()

    def send_line(self, name: str, text: str, *, enter: bool = True) -> None:
        """Type ``text`` literally into window 0, then press Enter.

        ``stuff`` interprets ``^X`` and backslash escapes, so the text goes
        through a private file, ``readbuf`` and ``paste`` instead.

        Raises
        ------
        SessionError
            ``text`` holds a control character, or the session does not exist.
        """
        check_console_text(text, what=f"text for session '{name}'")
        self._type(name, (text + ("\r" if enter else "")).encode())

    def send_keys(self, name: str, keys: t.Sequence[str]) -> None:
        """Press ``keys``: screen has no key names, so it types the bytes a terminal sends for each."""
        self._type(name, b"".join(key_bytes(parse_key(key)) for key in keys))

    def _type(self, name: str, payload: bytes) -> None:
        """Type ``payload`` into window 0 as if from the keyboard."""
        if not payload:
            return
        address = self._address(name)
        with _private_dir() as folder:
            buffer = folder / "line"
            buffer.touch(mode=0o600)
            buffer.write_bytes(payload)
            # eval keeps readbuf and paste together; _command waits for screen.
            self._command(address, "eval", f"readbuf {_quote(buffer)}", "paste .")

    def capture(self, name: str, lines: int = 50) -> str:
        """Return the last ``lines`` lines of window 0 and its scrollback."""
        address = self._address(name)
        with _private_dir() as folder:
            copy = folder / "hardcopy"
            self._command(address, "hardcopy", "-h", str(copy))
            text = _read_when_stable(copy, name)
        rows = [row.rstrip() for row in text.splitlines()]
        while rows and not rows[-1]:
            rows.pop()
        return "\n".join(rows[-lines:] if lines > 0 else [])

    def attach_command(self, name: str) -> tuple[list[str], dict[str, str] | None]:
        """Return ``screen -x <pid>.<name>`` (multi-display attach), our environment."""
        return ["screen", "-x", self._address(name)], None


class _ChildFinder:
    """Find a process's first child, reading ``/proc`` as little as possible.

    Uses ``/proc/<pid>/task/<pid>/children``; on kernels without it, scans
    ``/proc/*/stat`` once for every lookup of this instance.
    """

    def __init__(self) -> None:
        self._by_parent: dict[int, list[int]] | None = None

    def first_child(self, pid: int) -> int | None:
        """Return the lowest-numbered child of ``pid``, or ``None``."""
        if self._by_parent is None:
            try:
                text = (_PROC / str(pid) / "task" / str(pid) / "children").read_text()
            except FileNotFoundError:
                if not (_PROC / str(pid)).exists():
                    return None
                self._by_parent = _scan_parents()
            except OSError:
                return None
            else:
                children = [int(word) for word in text.split()]
                return min(children) if children else None
        found = self._by_parent.get(pid)
        return min(found) if found else None


def _scan_parents() -> dict[int, list[int]]:
    """Map each parent pid to its children from one pass over ``/proc/*/stat``."""
    by_parent: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name (field 2) may hold spaces and ")"; ppid follows the last ")".
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and fields[1].isdigit():
            by_parent.setdefault(int(fields[1]), []).append(int(entry.name))
    return by_parent


def _not_found(name: str) -> str:
    """Return the message for a session that is not running."""
    return f"session '{name}' not found in screen's socket folder. Is the instance running?"


def _parse_date(text: str | None) -> float | None:
    """Turn screen's ``MM/DD/YY HH:MM:SS`` (C locale) into a timestamp."""
    if not text:
        return None
    for fmt in ("%m/%d/%y %H:%M:%S", "%m/%d/%Y %H:%M:%S"):
        with contextlib.suppress(ValueError):
            return dt.datetime.strptime(text.strip(), fmt).timestamp()  # screen prints local time
    return None


def _age_key(info: SessionInfo) -> tuple[float, int]:
    """Order sessions oldest first: by creation time, then by SCREEN pid."""
    return (info.created or 0.0, int(info.address.split(".", 1)[0]))


def _quote(path: Path) -> str:
    """Quote a path for screen's command parser (single quotes: no ``$`` expansion)."""
    text = str(path)
    if "'" in text:
        msg = f"backend 'screen': temporary path {text!r} holds a quote. Set TMPDIR to a plain folder."
        raise SessionError(msg)
    return f"'{text}'"


@contextlib.contextmanager
def _private_dir() -> t.Iterator[Path]:
    """Yield a fresh mode-0700 folder for files the screen server reads or writes."""
    folder = Path(tempfile.mkdtemp(prefix="sup-screen-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _read_when_stable(path: Path, name: str) -> str:
    """Read a file screen writes asynchronously, once its size stops changing."""
    deadline = time.monotonic() + _FILE_TIMEOUT
    last_size = -1
    while True:
        with contextlib.suppress(FileNotFoundError):
            size = path.stat().st_size
            if size == last_size:
                data = path.read_bytes()
                try:
                    return data.decode()
                except UnicodeDecodeError:
                    # screen 4 writes one byte per cell: only Latin-1 survives.
                    return data.decode("latin-1")
            last_size = size
        if time.monotonic() > deadline:
            msg = f"session '{name}': screen wrote no hardcopy in time."
            raise SessionError(msg)
        time.sleep(_POLL_INTERVAL)

"""The agent's local snapshot socket: ``supervisor ls`` asks the running agent instead of looking itself.

Server (:class:`SnapshotServer`) and client (:func:`ask`) of one tiny protocol over a unix socket:
the client sends one JSON line ``{"op": "ls", "names": [...], "foreign": bool}``, the server answers
one JSON document (``{"ok": true, "instances": [...], "foreign": [...]}`` or ``{"ok": false,
"error": "..."}``) and closes. Standard library only: the ``ls`` client path must stay light.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import struct
import threading
import time
import typing as t
from pathlib import Path

if t.TYPE_CHECKING:
    from collections.abc import Callable, Sequence

logger = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024
"""Bytes a request line may have; a longer one is answered with an error."""
MAX_CLIENTS = 4
"""Connections served at once; more are closed at once (their client falls back to looking itself)."""
CLIENT_TIMEOUT = 2.0
"""Seconds a client waits for the whole answer, and the server for a client's request."""
_MAX_PATH = 107
"""Bytes of a unix socket path on Linux (``sun_path`` is 108 with its NUL)."""


def _fits(path: Path) -> bool:
    return len(os.fsencode(path)) <= _MAX_PATH


class SnapshotServer:
    """Serve ``provide(names, foreign)`` to local clients of the same user on a unix socket.

    A daemon thread accepts connections; each is answered on its own short thread, at most
    :data:`MAX_CLIENTS` at once. The socket file is mode 600, peers of another uid are refused
    (``SO_PEERCRED``), and :meth:`close` removes the file if it is still ours.

    Parameters
    ----------
    path
        The socket file (``Paths.agent_socket``). A stale socket there is replaced; a live one
        (another agent) or any other file is left alone and the server does not start.
    provide
        Returns ``{"instances": [...], "foreign": [...]}`` for the names asked (all when empty)
        and whether foreign sessions are wanted. A :class:`~supervisor.errors.SupervisorError`
        it raises is answered as ``{"ok": false, "error": str(e)}``.
    tmux_socket
        The tmux server the provider looks at; a request naming another one is refused, so a
        client pointed elsewhere looks itself.
    """

    def __init__(
        self,
        path: Path,
        provide: Callable[[list[str], bool], dict[str, t.Any]],
        *,
        tmux_socket: str | None = None,
    ) -> None:
        self.path = path
        self._provide = provide
        self._tmux_socket = tmux_socket
        self._listener: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self._closed = threading.Event()

    @property
    def serving(self) -> bool:
        """Whether the socket is bound and the accept thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> bool:
        """Bind the socket and start serving; return whether it serves (reasons are logged once)."""
        if not _fits(self.path):
            logger.warning(
                "snapshot socket %s: the path is longer than %d bytes; 'supervisor ls' looks itself",
                self.path,
                _MAX_PATH,
            )
            return False
        try:
            listener = self._bind()
        except OSError as e:
            logger.warning("snapshot socket %s: %s; 'supervisor ls' looks itself", self.path, e.strerror or e)
            return False
        if listener is None:
            return False
        self._listener = listener
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, name="snapshot-socket", daemon=True)
        self._thread.start()
        return True

    def _bind(self) -> socket.socket | None:
        with contextlib.suppress(FileNotFoundError):
            mode = self.path.lstat().st_mode
            if not stat.S_ISSOCK(mode):
                logger.warning("snapshot socket %s: a file that is not a socket is there; not serving", self.path)
                return None
            if _answers(self.path):
                logger.warning("snapshot socket %s: another agent serves it; not serving", self.path)
                return None
            self.path.unlink()  # stale: its agent is gone
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.path))
            # Before listen(), nobody can connect: no window with looser permissions.
            self.path.chmod(0o600)
            info = self.path.lstat()
            self._inode = (info.st_dev, info.st_ino)
            listener.listen(16)
        except OSError:
            listener.close()
            raise
        return listener

    def _serve(self) -> None:
        import selectors  # the server's only: the client side (``ls``) stays light

        listener = self._listener
        assert listener is not None
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._closed.is_set():
                ready = selector.select()
                if self._closed.is_set() or not any(key.fileobj is listener for key, _ in ready):
                    continue
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                if not self._slots.acquire(blocking=False):
                    conn.close()  # busy: that client looks itself
                    continue
                threading.Thread(target=self._answer, args=(conn,), name="snapshot-client", daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        try:
            with conn:
                if not _same_user(conn):
                    return
                conn.settimeout(CLIENT_TIMEOUT)
                reply = self._reply(_read_line(conn))
                conn.sendall(json.dumps(reply, separators=(",", ":"), default=str).encode())
        except OSError as e:
            logger.debug("snapshot socket: client went away: %s", e)
        finally:
            self._slots.release()

    def _reply(self, line: bytes | None) -> dict[str, t.Any]:
        from supervisor.errors import SupervisorError

        if line is None:
            return {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes or not one line"}
        try:
            request = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "request is not JSON"}
        if not isinstance(request, dict) or request.get("op") != "ls":
            return {"ok": False, "error": "unknown op; only 'ls' is served"}
        names = request.get("names", [])
        foreign = request.get("foreign", True)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not isinstance(foreign, bool):
            return {"ok": False, "error": "'names' must be a list of strings and 'foreign' true or false"}
        wanted = request.get("tmux_socket")
        if self._tmux_socket is not None and wanted is not None and wanted != self._tmux_socket:
            return {"ok": False, "error": f"this agent looks at tmux server '{self._tmux_socket}', not '{wanted}'"}
        try:
            result = self._provide(names, foreign)
        except SupervisorError as e:
            return {"ok": False, "error": str(e)}
        except Exception:
            logger.exception("snapshot socket: the provider failed")
            return {"ok": False, "error": "internal error (see the agent's log)"}
        return {"ok": True, **result}

    def close(self) -> None:
        """Stop serving and remove the socket file if it is still ours."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._wake_w != -1:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        for fd in (self._wake_r, self._wake_w):
            if fd != -1:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self._inode is not None:
            with contextlib.suppress(OSError):
                info = self.path.lstat()
                if (info.st_dev, info.st_ino) == self._inode:
                    self.path.unlink()


def _same_user(conn: socket.socket) -> bool:
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return True  # no peer credentials on this platform: the socket's mode 600 is the guard
    creds = conn.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    if uid != os.getuid():
        logger.warning("snapshot socket: refused a client of uid %d", uid)
        return False
    return True


def _read_line(conn: socket.socket) -> bytes | None:
    """Return the request line without its newline, or ``None`` if it is too long or unterminated."""
    data = b""
    while b"\n" not in data:
        if len(data) > MAX_REQUEST:
            return None
        chunk = conn.recv(4096)
        if not chunk:
            return None
        data += chunk
    line = data.split(b"\n", 1)[0]
    return line if len(line) <= MAX_REQUEST else None


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def ask(
    path: Path,
    names: Sequence[str] = (),
    *,
    foreign: bool = True,
    tmux_socket: str | None = None,
    timeout: float = CLIENT_TIMEOUT,
) -> dict[str, t.Any] | None:
    """Return the agent's ``{"instances": [...], "foreign": [...]}``, or ``None`` on any failure.

    ``None`` means: no socket, refused, no answer within ``timeout`` seconds in all, or a reply that
    is not a successful one of the expected shape. The caller then looks itself.
    """
    if not _fits(path):
        return None
    request: dict[str, t.Any] = {"op": "ls", "names": list(names), "foreign": foreign}
    if tmux_socket is not None:
        request["tmux_socket"] = tmux_socket
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(path))
            conn.sendall(json.dumps(request).encode() + b"\n")
            chunks = []
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                conn.settimeout(left)
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        reply = json.loads(b"".join(chunks))
    except (OSError, ValueError):
        return None
    if not isinstance(reply, dict) or reply.get("ok") is not True:
        return None
    instances, others = reply.get("instances"), reply.get("foreign")
    if not isinstance(instances, list) or not isinstance(others, list):
        return None
    if not all(isinstance(r, dict) for r in instances) or not all(isinstance(r, dict) for r in others):
        return None
    return {"instances": instances, "foreign": others}

"""Shared bench plumbing: isolated environment, process bookkeeping, timing and statistics.

Every process the bench starts is recorded here and stopped by pid at exit, even on failure.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
PEERS_DIR = BENCH_DIR / "_peers"
RESULTS_DIR = BENCH_DIR / "results"
PYTHON = sys.executable  # the project's venv python: runs `supervisor` and every peer's bot
SUPERVISOR = str(Path(PYTHON).parent / "supervisor")
BOT = BENCH_DIR / "bot.py"


def log(text: str) -> None:
    """Print one progress line to stderr with a timestamp."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- statistics ------------------------------------------------------------------------


def stats(samples: t.Sequence[float]) -> dict[str, t.Any]:
    """Return median, min, max, percentiles and the raw samples of a list of numbers."""
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)

    def pct(p: float) -> float:
        k = (len(ordered) - 1) * p
        lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)

    return {
        "n": len(ordered),
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "p99": pct(0.99),
        "mean": statistics.fmean(ordered),
        "samples": [round(x, 6) for x in samples] if len(samples) <= 50 else None,
    }


# -- environment -----------------------------------------------------------------------


@dataclasses.dataclass
class Env:
    """One isolated bench run: a temp root, private sockets and the environment to pass on."""

    root: Path
    tmux_socket: str
    env: dict[str, str]

    @classmethod
    def create(cls) -> Env:
        """Make the temp root and an environment with no way out to the user's servers."""
        root = Path(tempfile.mkdtemp(prefix="supbench-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPERVISOR_", "TMUX", "PM2_"))}
        env.pop("SCREENDIR", None)
        screens = root / "screens"
        screens.mkdir(mode=0o700)
        socket_name = f"bench{os.getpid()}"
        env.update(
            SUPERVISOR_HOME=str(root / "home"),
            SUPERVISOR_TMUX_SOCKET=socket_name,
            TMUX_TMPDIR=str(root),  # tmux sockets (ours and "default") live under the temp root
            SCREENDIR=str(screens),
            PM2_HOME=str(root / "pm2"),
            PYTHONDONTWRITEBYTECODE="1",
            NO_COLOR="1",
        )
        return cls(root=root, tmux_socket=socket_name, env=env)

    def with_home(self, home: Path, socket_name: str) -> dict[str, str]:
        """Return the environment for another supervisor home and tmux socket."""
        return {**self.env, "SUPERVISOR_HOME": str(home), "SUPERVISOR_TMUX_SOCKET": socket_name}


# -- processes -------------------------------------------------------------------------


class Procs:
    """Everything started by the bench: child processes and cleanup callbacks, undone LIFO."""

    def __init__(self) -> None:
        self._popens: list[subprocess.Popen[bytes]] = []
        self._cleanups: list[tuple[str, t.Callable[[], None]]] = []
        self._done = False
        atexit.register(self.cleanup)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    def spawn(
        self, argv: t.Sequence[str], *, env: dict[str, str], log_path: Path | None = None, **kw: t.Any
    ) -> subprocess.Popen[bytes]:
        """Start a long-running child, recorded so it is stopped by pid at the end."""
        out: t.Any = subprocess.DEVNULL
        if log_path is not None:
            out = log_path.open("ab")
        proc = subprocess.Popen(
            list(argv), env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw
        )
        if log_path is not None:
            out.close()
        self._popens.append(proc)
        return proc

    def on_cleanup(self, what: str, fn: t.Callable[[], None]) -> None:
        """Register ``fn`` to run at cleanup (last registered runs first)."""
        self._cleanups.append((what, fn))

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        """Stop one child by pid: SIGTERM, then SIGKILL after ``timeout``."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(5)
        if proc in self._popens:
            self._popens.remove(proc)

    def cleanup(self) -> None:
        """Run cleanups, then stop every recorded child."""
        if self._done:
            return
        self._done = True
        while self._cleanups:
            what, fn = self._cleanups.pop()
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - cleanup must go on whatever failed
                log(f"cleanup {what}: {e}")
        for proc in reversed(list(self._popens)):
            with contextlib.suppress(Exception):
                self.stop(proc, timeout=5)


def kill_pids(pids: t.Iterable[int], timeout: float = 5.0) -> None:
    """SIGTERM then SIGKILL the given pids (only pids the bench started)."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            proc.terminate()
            procs.append(proc)
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def bot_pids(tag: str, names: t.Collection[str] | None, root: Path) -> dict[str, int]:
    """Return name -> pid of this run's live bench bots whose name starts with ``tag`` (or is in ``names``).

    Only bots whose program path or working folder lies under ``root`` (this run's temp root) count:
    another bench run on the same host names its bots the same.
    """
    inside = (f"{root}/", f"{root.resolve()}/")
    found: dict[str, int] = {}
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if len(cmd) < 3 or not cmd[-3].endswith("bot.py") or cmd[-2] != "--name":
            continue
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        name = cmd[-1]
        if not ((names is not None and name in names) or (names is None and name.startswith(tag))):
            continue
        if not cmd[-3].startswith(inside):
            try:
                if not f"{proc.cwd()}/".startswith(inside):
                    continue
            except psutil.Error:
                continue
        found[name] = proc.info["pid"]
    return found


def wait_until(predicate: t.Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def run(
    argv: t.Sequence[str], *, env: dict[str, str], timeout: float = 300, check: bool = True, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion and return its output (raise on failure when ``check``)."""
    proc = subprocess.run(
        list(argv),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        msg = f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"
        raise RuntimeError(msg)
    return proc


def timed(argv: t.Sequence[str], *, env: dict[str, str], timeout: float = 300, cwd: Path | None = None) -> float:
    """Return the wall time of one successful run of ``argv``, in seconds."""
    start = time.perf_counter()
    run(argv, env=env, timeout=timeout, cwd=cwd)
    return time.perf_counter() - start


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1 (bind to 0, read, close)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def du_kib(path: Path, exclude_git: bool = False) -> int:
    """Return the disk use of ``path`` in KiB, as ``du -sk`` counts it."""
    argv = ["du", "-sk"]
    if exclude_git:
        argv.append("--exclude=.git")
    out = subprocess.run([*argv, str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def version_of(argv: t.Sequence[str], env: dict[str, str] | None = None) -> str:
    """Return the first line a ``--version`` style command prints, or 'not found'."""
    if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
        return "not found"
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"error: {e}"
    text = (proc.stdout or proc.stderr).strip().splitlines()
    return text[-1].strip() if text else "?"


class EventStream:
    """One dashboard ``/events`` stream read as a browser tab reads it: the bytes received, by time.

    A subclass looks into each chunk in :meth:`received` (its fields set before this ``__init__``:
    reading starts here).
    """

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        import http.client
        import threading

        self.opened = time.perf_counter()
        self.ended: float | None = None
        self.chunks: list[tuple[float, int]] = []
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.conn.request("GET", "/events", headers={"Accept": "text/event-stream"})
        self.sock = self.conn.sock  # http.client forgets it once a response will close the connection
        self.response = self.conn.getresponse()
        if self.response.status != 200:
            msg = f"/events answered {self.response.status}"
            raise RuntimeError(msg)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while True:
                data = self.response.read1(65536)
                now = time.perf_counter()
                if not data:
                    break
                self.chunks.append((now, len(data)))
                self.received(data, now)
        self.ended = time.perf_counter()

    def received(self, data: bytes, now: float) -> None:
        """Look at one chunk of the stream (nothing here)."""

    def between(self, start: float, end: float) -> int:
        """Return the bytes received from ``start`` to ``end``."""
        return sum(n for when, n in list(self.chunks) if start <= when < end)

    def close(self) -> None:
        """Close the stream."""
        with contextlib.suppress(OSError, AttributeError):
            self.sock.shutdown(2)
        self.conn.close()

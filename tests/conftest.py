"""Shared fixtures: isolation, real tmux/screen/git/mosquitto, and ``wait_until``."""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import git
import pytest
from click.testing import CliRunner, Result

from supervisor.cli import cli
from supervisor.core.manager import Manager
from supervisor.paths import Paths

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import libtmux

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
DATA = Path(__file__).parent / "data"
RECIPES = DATA / "recipes"


def missing(what: str) -> t.NoReturn:
    """Skip a test whose prerequisite ``what`` is missing; under CI=true fail instead, so nothing is skipped there."""
    if IN_CI:
        pytest.fail(f"{what} but CI=true: the CI script (make test) must provide it", pytrace=False)
    pytest.skip(what)


def require_binary(name: str) -> str:
    """Return the path of ``name``; skip locally, fail under CI=true, when it is missing."""
    found = shutil.which(name)
    if found:
        return found
    missing(f"'{name}' is not installed")


def require_module(name: str) -> t.Any:
    """Import and return module ``name``; skip locally, fail under CI=true, when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"Python module '{name}' is not installed (make test installs the dev group)")


def wait_until(
    predicate: Callable[[], t.Any], timeout: float = 5.0, interval: float = 0.05, message: str = ""
) -> t.Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``SUPERVISOR_HOME`` at a temp folder and drop outside tmux/screen/supervisor settings."""
    for key in list(os.environ):
        if key.startswith("SUPERVISOR_"):
            monkeypatch.delenv(key)
    for key in ("TMUX", "TMUX_PANE", "SCREENDIR", "STY"):
        monkeypatch.delenv(key, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("SUPERVISOR_HOME", str(home))
    return home


@pytest.fixture
def tmux_socket(server: libtmux.Server) -> str:
    """A private tmux socket name (libtmux's ``server`` fixture reaps it at teardown)."""
    require_binary("tmux")
    assert server.socket_name is not None
    return server.socket_name


@pytest.fixture
def screendir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private ``SCREENDIR``; every screen session in it is quit at teardown."""
    require_binary("screen")
    # screen refuses socket paths that are long; keep the folder short.
    path = Path(f"/tmp/sup-scr-{os.getpid()}-{time.monotonic_ns() % 10**9}")
    path.mkdir(mode=0o700)
    monkeypatch.setenv("SCREENDIR", str(path))
    yield path
    with contextlib.suppress(Exception):
        out = subprocess.run(
            ["screen", "-ls"], capture_output=True, text=True, env={**os.environ, "SCREENDIR": str(path)}, check=False
        ).stdout
        for line in out.splitlines():
            parts = line.strip().split()
            if parts and "." in parts[0] and parts[0].split(".", 1)[0].isdigit():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(parts[0].split(".", 1)[0]), signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


def make_origin(path: Path, files: dict[str, str], message: str = "initial") -> git.Repo:
    """Create a git repository at ``path`` with one commit holding ``files``."""
    require_binary("git")
    repo = git.Repo.init(path, initial_branch="main")
    with repo.config_writer() as cfg:
        cfg.set_value("user", "name", "Test")
        cfg.set_value("user", "email", "test@example.invalid")
    commit_files(repo, files, message)
    return repo


def commit_files(repo: git.Repo, files: dict[str, str], message: str) -> str:
    """Write ``files`` into ``repo``'s work tree, commit them and return the hexsha."""
    root = Path(repo.working_tree_dir or ".")
    for rel, text in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        if rel.endswith(".sh"):
            target.chmod(0o755)
    repo.index.add(list(files))
    return repo.index.commit(message).hexsha


TICKER_BOT = (DATA / "ticker_bot.py").read_text() if (DATA / "ticker_bot.py").exists() else ""


@pytest.fixture
def bot_origin(tmp_path: Path) -> Path:
    """A git origin holding the small console bot the test recipes run."""
    origin = tmp_path / "origin"
    # Closed here: GitPython's cat-file helpers left to the garbage collector fail a later test with a ResourceWarning.
    make_origin(
        origin, {"bot.py": (DATA / "ticker_bot.py").read_text(), "install.sh": "#!/bin/sh\necho installed\n"}
    ).close()
    return origin


@pytest.fixture
def lifecycle_bot_origin(tmp_path: Path) -> Path:
    """A git origin holding the bot with a login prompt and a ready line (``data/lifecycle_bot.py``)."""
    path = tmp_path / "origin"
    make_origin(path, {"bot.py": (DATA / "lifecycle_bot.py").read_text()}).close()
    return path


@pytest.fixture
def manager(isolated_env: Path, tmux_socket: str) -> Iterator[Manager]:
    """A Manager on the private tmux socket; every bot it still runs is killed at teardown."""
    mgr = Manager(Paths.from_env(isolated_env, tmux_socket))
    yield mgr
    for status in mgr.status():
        if status.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(status.pid, signal.SIGKILL)


def invoke(*args: str, code: int = 0, stdin: str | bytes | None = None) -> Result:
    """Run ``supervisor ARGS`` in-process and check its exit code (printing its output if it differs)."""
    result = CliRunner().invoke(cli, list(args), prog_name="supervisor", input=stdin)
    assert result.exit_code == code, (
        f"supervisor {' '.join(args)} exited {result.exit_code} (expected {code})\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}\n{result.exception!r}"
    )
    return result


class Clock:
    """A settable clock, so time windows (rate limits, expiry, redelivery) are tested without sleeping."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Broker(t.NamedTuple):
    host: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def start_mosquitto(workdir: Path, port: int | None = None, extra_conf: str = "") -> Broker:
    """Start a real mosquitto on a free loopback port and wait until it accepts connections."""
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if binary is None:
        require_binary("mosquitto")
        raise AssertionError  # unreachable: require_binary skips or fails
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    log = workdir / "mosquitto.log"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"log_dest file {log}\nlog_type all\n{extra_conf}"
        # As root, mosquitto drops to user 'mosquitto', which cannot write into pytest's tmp_path.
        + ("user root\n" if os.geteuid() == 0 and "user " not in extra_conf else "")
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 5
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                text = log.read_text() if log.exists() else ""
                pytest.fail(f"mosquitto did not start on port {port}: {text}")
            time.sleep(0.05)
    return Broker("127.0.0.1", port, proc, log)


def stop_process(proc: subprocess.Popen[t.Any], timeout: float = 5.0) -> None:
    """Terminate ``proc`` and wait for it, killing it if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


@pytest.fixture
def mosquitto(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Broker]:
    """A private mosquitto broker for one test; its log is printed if the test failed."""
    broker = start_mosquitto(tmp_path / "broker")
    yield broker
    stop_process(broker.process)
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and broker.log.exists():
        sys.stderr.write(f"--- mosquitto log ---\n{broker.log.read_text()[-5000:]}\n")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> t.Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report

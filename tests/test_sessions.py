"""Contract tests: one body per behaviour, run against real tmux and real GNU screen."""

from __future__ import annotations

import logging
import os
import sys
import time
import typing as t
from pathlib import Path

import pytest

from supervisor import _proc
from supervisor.core.sessions.base import SessionSpec
from supervisor.core.sessions.screen import ScreenBackend
from supervisor.core.sessions.tmux import TmuxBackend
from supervisor.errors import SessionError, UnsafeConsoleText
from tests.conftest import wait_until

if t.TYPE_CHECKING:
    from supervisor.core.sessions.base import SessionBackend, SessionInfo

# Prints its cwd and one environment variable, then echoes stdin lines as "got:<line>".
ECHO_BOT = """\
import os, sys
print("ready", os.getcwd(), os.environ.get("SUP_TEST_VAR"), flush=True)
for line in sys.stdin:
    if line.strip() == "quit":
        break
    print("got:" + line.rstrip("\\n"), flush=True)
"""
# Prints 60 numbered lines (more than a 24-line screen window holds), then waits.
COUNTER_BOT = """\
import sys
for i in range(60):
    print(f"line-{i}")
print("ready", flush=True)
sys.stdin.read()
"""


def argv_for(program: str) -> list[str]:
    return [sys.executable, "-c", program]


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def is_alive(pid: int) -> bool:
    """Return whether ``pid`` runs (a zombie awaiting its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


@pytest.fixture(params=["tmux", "screen"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> SessionBackend:
    if request.param == "tmux":
        return TmuxBackend(socket_name=request.getfixturevalue("tmux_socket"))
    request.getfixturevalue("screendir")
    return ScreenBackend(screenrc=tmp_path / "conf" / "screenrc")


class Started(t.NamedTuple):
    info: SessionInfo
    log: Path
    cwd: Path


@pytest.fixture
def echo_session(backend: SessionBackend, tmp_path: Path) -> Started:
    # '#': tmux expands -c and pipe-pane as formats; the log path goes through a shell.
    cwd = tmp_path / "work #{session_name}"
    cwd.mkdir()
    log = tmp_path / "logs dir" / "bot #1's.log"
    info = backend.new_session(
        "sup-echo",
        argv_for(ECHO_BOT),
        cwd=cwd,
        log_path=log,
        env={"SUP_TEST_VAR": "v a;l$ue;"},
    )
    return Started(info, log, cwd)


def log_text(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


def test_new_session_is_listed_with_program_pid(backend: SessionBackend, echo_session: Started) -> None:
    info = echo_session.info
    assert (info.name, info.backend) == ("sup-echo", backend.name)
    # pid is the program itself: tmux runs "exec <argv>", screen runs argv directly.
    assert info.pid is not None
    assert is_alive(info.pid)
    pid = info.pid
    # screen may return between its fork and the child's exec: same pid, old cmdline.
    wait_until(lambda: cmdline(pid)[1:] == ["-c", ECHO_BOT], message="the program's exec")
    listed = backend.list_sessions()
    assert list(listed) == ["sup-echo"]
    assert listed["sup-echo"].pid == info.pid
    assert listed["sup-echo"].attached is False
    assert listed["sup-echo"].created is not None
    assert abs(listed["sup-echo"].created - time.time()) < 120
    if backend.name == "screen":
        assert info.address.endswith(".sup-echo")
        assert info.address.split(".", 1)[0].isdigit()
    else:
        assert info.address == "sup-echo"
    assert backend.has_session("sup-echo")
    assert not backend.has_session("sup-ech")  # no prefix matching
    assert not backend.has_session("sup-echo-2")


def test_log_holds_the_first_line(echo_session: Started) -> None:
    expected = f"ready {echo_session.cwd} v a;l$ue;"
    wait_until(lambda: expected in log_text(echo_session.log), message="first line in the log")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('$(id) ; rm -rf x | & "q" \\n ^M', id="shell-meta"),
        pytest.param("ends with a semicolon;", id="trailing-semicolon"),
        pytest.param("escaped\\;", id="trailing-escaped-semicolon"),
        pytest.param(
            "#{session_name} {a} ~ $HOME %s `w` 'x' \\015 Enter",
            id="tmux-formats-and-keys",
        ),
        pytest.param("caf\u00e9 \u00f1", id="non-ascii"),  # screen's hardcopy: Latin-1 only
    ],
)
def test_send_line_types_literally(backend: SessionBackend, echo_session: Started, text: str) -> None:
    wait_until(lambda: "ready" in backend.capture("sup-echo"), message="the bot to start")
    backend.send_line("sup-echo", text)
    expected = "got:" + text
    wait_until(
        lambda: expected in backend.capture("sup-echo").splitlines(),
        message=f"{expected!r} on screen",
    )
    wait_until(
        lambda: expected in log_text(echo_session.log).splitlines(),
        message=f"{expected!r} in the log",
    )


def test_send_line_without_enter_waits_for_it(backend: SessionBackend, echo_session: Started) -> None:
    wait_until(lambda: "ready" in backend.capture("sup-echo"), message="the bot to start")
    backend.send_line("sup-echo", "part one ", enter=False)
    backend.send_line("sup-echo", "part two")
    wait_until(
        lambda: "got:part one part two" in backend.capture("sup-echo").splitlines(),
        message="the joined line",
    )


def test_send_line_refuses_control_characters(backend: SessionBackend, echo_session: Started) -> None:
    wait_until(lambda: "ready" in backend.capture("sup-echo"), message="the bot to start")
    for text in ("one\ntwo", "one\rtwo", "trailing\n", "\x15history", "x\x03", "\x1b[A", "tab\there", "c1\x9b"):
        with pytest.raises(UnsafeConsoleText, match="holds control characters"):
            backend.send_line("sup-echo", text)
    backend.send_line("sup-echo", "after")
    wait_until(lambda: "got:after" in backend.capture("sup-echo").splitlines(), message="the clean line")
    assert [line for line in backend.capture("sup-echo").splitlines() if line.startswith("got:")] == ["got:after"]


def test_send_keys_presses_named_keys(backend: SessionBackend, echo_session: Started) -> None:
    wait_until(lambda: "ready" in backend.capture("sup-echo"), message="the bot to start")
    backend.send_line("sup-echo", "typo", enter=False)
    # Ctrl-U is the terminal's line-kill key: the typed word is gone before Enter.
    backend.send_keys("sup-echo", ["C-u"])
    backend.send_line("sup-echo", "clean", enter=False)
    backend.send_keys("sup-echo", ["Enter"])
    wait_until(lambda: "got:clean" in backend.capture("sup-echo").splitlines(), message="the clean line")
    assert echo_session.info.pid is not None
    backend.send_keys("sup-echo", ["C-c"])
    wait_until(lambda: not is_alive(t.cast("int", echo_session.info.pid)), message="Ctrl-C to end the bot")
    with pytest.raises(SessionError, match="key 'Ctrl-Q' is not known"):
        backend.send_keys("sup-echo", ["Ctrl-Q"])


def test_capture_returns_the_last_lines(backend: SessionBackend, tmp_path: Path) -> None:
    backend.new_session(
        "sup-count",
        argv_for(COUNTER_BOT),
        cwd=tmp_path,
        log_path=tmp_path / "count.log",
    )
    wait_until(lambda: "ready" in backend.capture("sup-count"), message="the bot to print")
    assert backend.capture("sup-count", lines=3) == "line-58\nline-59\nready"
    # the whole output is longer than the window: the rest comes from the scrollback.
    everything = backend.capture("sup-count", lines=200).splitlines()
    assert everything[-61:] == [*(f"line-{i}" for i in range(60)), "ready"]


def test_kill_session_ends_the_program(backend: SessionBackend, echo_session: Started) -> None:
    pid = echo_session.info.pid
    assert pid is not None
    backend.kill_session("sup-echo")
    wait_until(lambda: not is_alive(pid), message="the program to end")
    assert not backend.has_session("sup-echo")
    assert backend.list_sessions() == {}
    backend.kill_session("sup-echo")  # a missing session is not an error


def test_session_ends_with_its_program(backend: SessionBackend, echo_session: Started) -> None:
    wait_until(lambda: "ready" in backend.capture("sup-echo"), message="the bot to start")
    backend.send_line("sup-echo", "quit")
    wait_until(lambda: not backend.has_session("sup-echo"), message="the session to go away")


def test_duplicate_name_raises(backend: SessionBackend, echo_session: Started, tmp_path: Path) -> None:
    with pytest.raises(SessionError, match="session 'sup-echo' already exists"):
        backend.new_session(
            "sup-echo",
            argv_for(ECHO_BOT),
            cwd=tmp_path,
            log_path=tmp_path / "other.log",
        )
    assert list(backend.list_sessions()) == ["sup-echo"]


def test_new_sessions_starts_many_and_logs_each(backend: SessionBackend, tmp_path: Path) -> None:
    # 40 sessions with long paths: more than one tmux command line (8 KB each) is needed.
    count = 40 if backend.name == "tmux" else 3
    cwd = tmp_path / ("deep-" * 30 + "#dir")
    cwd.mkdir()
    specs = [
        SessionSpec(
            f"sup-b{i}",
            argv_for(f"print('bot {i} up', flush=True); input()"),
            cwd,
            tmp_path / "logs" / f"b{i};.log",
            env={"SUP_TEST_VAR": f"v{i};"},
        )
        for i in range(count)
    ]
    infos = backend.new_sessions(specs)
    assert [info.name for info in infos] == [spec.name for spec in specs]
    listed = backend.list_sessions()
    assert sorted(listed) == sorted(spec.name for spec in specs)
    for spec, info in zip(specs, infos, strict=True):
        assert info.pid is not None and listed[spec.name].pid == info.pid
    wait_until(
        lambda: all(f"bot {i} up" in log_text(spec.log_path) for i, spec in enumerate(specs)),
        timeout=20,
        message="every session's first line in its own log",
    )


def test_new_sessions_stops_at_the_first_that_cannot_start(
    backend: SessionBackend, echo_session: Started, tmp_path: Path
) -> None:
    specs = [
        SessionSpec(name, argv_for(ECHO_BOT), tmp_path, tmp_path / f"{name}.log")
        for name in ("sup-first", "sup-echo", "sup-after")
    ]
    with pytest.raises(SessionError, match="session 'sup-echo' already exists"):
        backend.new_sessions(specs)
    assert sorted(backend.list_sessions()) == ["sup-echo", "sup-first"]


def test_tmux_object_model_sees_the_same_sessions(tmux_socket: str, tmp_path: Path) -> None:
    backend = TmuxBackend(socket_name=tmux_socket)
    backend.new_sessions(
        [SessionSpec(f"sup-o{i}", argv_for("input()"), tmp_path, tmp_path / f"o{i}.log") for i in range(3)]
    )
    listed = backend.list_sessions()
    walked = {s.session_name: s.active_pane.pane_pid for s in backend.server.sessions if s.active_pane}
    assert walked == {name: str(info.pid) for name, info in listed.items()}


def test_missing_session_is_loud_for_actions(backend: SessionBackend, echo_session: Started) -> None:
    with pytest.raises(SessionError, match="session 'sup-nope' not found"):
        backend.send_line("sup-nope", "hello")
    with pytest.raises(SessionError, match="session 'sup-nope' not found"):
        backend.capture("sup-nope")


def test_missing_cwd_raises(backend: SessionBackend, tmp_path: Path) -> None:
    with pytest.raises(SessionError, match="does not exist"):
        backend.new_session(
            "sup-x",
            argv_for(ECHO_BOT),
            cwd=tmp_path / "nope",
            log_path=tmp_path / "x.log",
        )
    assert backend.list_sessions() == {}


@pytest.mark.parametrize("kind", ["tmux", "screen"])
def test_listing_without_a_server_is_empty(
    kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    empty: SessionBackend
    if kind == "tmux":
        empty = TmuxBackend(socket_name=request.getfixturevalue("tmux_socket") + "-never-started")
    else:
        request.getfixturevalue("screendir")
        monkeypatch.setenv("SCREENDIR", str(tmp_path / "no-such-screendir"))
        empty = ScreenBackend(screenrc=tmp_path / "screenrc")
    assert empty.is_available()
    assert empty.list_sessions() == {}
    assert not empty.has_session("sup-echo")
    empty.kill_session("sup-echo")
    with pytest.raises(SessionError, match="not found"):
        empty.send_line("sup-echo", "hello")


def test_attach_command(
    backend: SessionBackend,
    echo_session: Started,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    if isinstance(backend, TmuxBackend):
        monkeypatch.setenv("TMUX", "/tmp/tmux-0/some-other-server,123,0")
        argv, env = backend.attach_command("sup-echo")
        assert argv == [
            "tmux",
            "-L",
            backend.socket_name,
            "attach-session",
            "-t",
            "=sup-echo",
        ]
        assert env is not None
        assert "TMUX" not in env
        assert env["PATH"] == os.environ["PATH"]
        ours = _proc.run(
            [
                "tmux",
                "-L",
                backend.socket_name,
                "display-message",
                "-p",
                "#{socket_path}",
            ]
        )
        monkeypatch.setenv("TMUX", f"{ours.stdout.strip()},123,0")
        argv, env = backend.attach_command("sup-echo")
        assert argv == [
            "tmux",
            "-L",
            backend.socket_name,
            "switch-client",
            "-t",
            "=sup-echo",
        ]
        assert env is None
    else:
        argv, env = backend.attach_command("sup-echo")
        assert argv == ["screen", "-x", echo_session.info.address]
        assert env is None


def test_screen_writes_its_screenrc(screendir: Path, tmp_path: Path) -> None:
    rc = tmp_path / "conf" / "screenrc"
    backend = ScreenBackend(screenrc=rc)
    backend.new_session("sup-rc", argv_for(ECHO_BOT), cwd=tmp_path, log_path=tmp_path / "rc.log")
    assert "logfile flush 1" in rc.read_text()
    rc.write_text("# mine\nlogfile flush 1\n")
    backend.kill_session("sup-rc")
    backend.new_session("sup-rc", argv_for(ECHO_BOT), cwd=tmp_path, log_path=tmp_path / "rc.log")
    assert rc.read_text() == "# mine\nlogfile flush 1\n"  # never overwrites the user's file


def test_screen_duplicate_names_pick_the_newest(
    screendir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """screen allows two sessions of one name; start them behind the backend."""
    for _ in range(2):
        _proc.run(
            ["screen", "-dmS", "sup-twin", *argv_for(ECHO_BOT)],
            cwd=tmp_path,
            check=True,
        )
    backend = ScreenBackend(screenrc=tmp_path / "screenrc")

    def both_up() -> bool:
        out = _proc.run(["screen", "-ls"]).stdout
        return out.count(".sup-twin\t") == 2

    wait_until(both_up, message="two screen sessions named sup-twin")
    with caplog.at_level(logging.WARNING, logger="supervisor.core.sessions.screen"):
        info: SessionInfo = backend.list_sessions()["sup-twin"]
    assert "two sessions named sup-twin" in caplog.text
    pids = sorted(
        int(line.split(".", 1)[0]) for line in _proc.run(["screen", "-ls"]).stdout.split() if ".sup-twin" in line
    )
    assert info.address == f"{pids[-1]}.sup-twin"


def test_tmux_hot_paths_run_plain_tmux_and_pane_work_goes_through_libtmux(tmux_socket: str, tmp_path: Path) -> None:
    # Listing, launching and typing a line stay one plain tmux call each (bench/libraries.py: libtmux's listing
    # is several times slower and its import alone costs more); keys and captures act on libtmux's pane objects.
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from supervisor.core.sessions.base import SessionSpec\n"
        "from supervisor.core.sessions.tmux import TmuxBackend\n"
        "socket, tmp = sys.argv[1], Path(sys.argv[2])\n"
        "backend = TmuxBackend(socket)\n"
        f"argv = [sys.executable, '-c', {ECHO_BOT!r}]\n"
        "backend.new_sessions([SessionSpec('sup-hot', argv, tmp, tmp / 'hot.log')])\n"
        "assert 'sup-hot' in backend.list_sessions()\n"
        "backend.send_line('sup-hot', 'ping')\n"
        "assert 'libtmux' not in sys.modules, 'a hot path imported libtmux'\n"
        "backend.send_keys('sup-hot', ['Enter'])\n"
        "backend.capture('sup-hot')\n"
        "assert 'libtmux' in sys.modules, 'keys and capture did not use libtmux'\n"
        "backend.kill_session('sup-hot')\n"
    )
    done = _proc.run([sys.executable, "-c", script, tmux_socket, str(tmp_path)], timeout=60)
    assert done.returncode == 0, done.stderr

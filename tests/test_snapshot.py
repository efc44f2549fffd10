from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import threading
import typing as t
from pathlib import Path

import pytest

from supervisor.agent.snapshot import MAX_REQUEST, SnapshotServer, ask
from supervisor.cli import listing
from supervisor.errors import InstanceNotFound
from supervisor.paths import Paths
from tests.conftest import invoke

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from supervisor.core.manager import Manager

HEAVY = ("click", "psutil", "libtmux", "yaml", "git")
TIME_FIELDS = ("cpu_percent", "uptime")
"""Fields that change between two looks at the same running bot."""


class Provider:
    """The agent's side of the socket, built on the real ``Manager`` (as the agent wires it); counts its calls."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.calls: list[tuple[list[str], bool]] = []

    def __call__(self, names: list[str], foreign: bool) -> dict[str, t.Any]:
        self.calls.append((names, foreign))
        statuses = self.manager.status(names or None)
        others = self.manager.foreign_sessions() if foreign else []
        return {"instances": [s.to_dict() for s in statuses], "foreign": [f.to_dict() for f in others]}


@pytest.fixture
def paths(manager: Manager, monkeypatch: pytest.MonkeyPatch) -> Paths:
    monkeypatch.setenv("SUPERVISOR_TMUX_SOCKET", manager.paths.tmux_socket)
    return manager.paths


@pytest.fixture
def served(manager: Manager, paths: Paths) -> Iterator[tuple[SnapshotServer, Provider]]:
    provider = Provider(manager)
    server = SnapshotServer(paths.agent_socket, provider, tmux_socket=paths.tmux_socket)
    assert server.start()
    yield server, provider
    server.close()


@pytest.fixture
def bots(manager: Manager, tmux_socket: str) -> list[str]:
    names = ["eb-1", "eb-2"]
    for name in names:
        manager.new(name, "example-bot")
    manager.start(names)
    # A session of ours whose record is gone: listed among the foreign sessions as an orphan.
    subprocess.run(["tmux", "-L", tmux_socket, "new-session", "-d", "-s", "sup-ghost", "sleep 600"], check=True)
    return names


def columns(table: str) -> list[list[str]]:
    """The cells of a table without CPU% (6) and UPTIME (8), which change between two looks."""
    return [[c for i, c in enumerate(line.split()) if i not in (6, 8)] for line in table.splitlines()]


def without_time(records: list[dict[str, t.Any]]) -> list[dict[str, t.Any]]:
    return [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in records]


def test_both_paths_give_the_same_records(
    bots: list[str], served: tuple[SnapshotServer, Provider], paths: Paths
) -> None:
    _, provider = served
    via_agent = listing.collect(paths, [], foreign=True)
    assert provider.calls == [([], True)]
    direct = listing.collect_directly(paths, [], foreign=True)
    assert [r["name"] for r in via_agent.instances] == bots
    assert {r["state"] for r in via_agent.instances} == {"running"}
    assert without_time(via_agent.instances) == without_time(direct.instances)
    assert [f["session"] for f in via_agent.foreign] == ["sup-ghost"]
    assert via_agent.foreign == direct.foreign
    # Named instances: no foreign sessions are asked for, as on the direct path.
    named = listing.collect(paths, ["eb-2"], foreign=True)
    assert provider.calls[-1] == (["eb-2"], False)
    assert (without_time(named.instances), named.foreign) == (without_time(direct.instances[1:]), [])


def test_ls_json_and_table_are_the_same_through_the_agent_and_without_it(
    bots: list[str], served: tuple[SnapshotServer, Provider]
) -> None:
    server, provider = served
    agent_json = json.loads(invoke("ls", "--json").stdout)
    agent_table = invoke("ls").stdout
    assert len(provider.calls) == 2
    server.close()
    direct_json = json.loads(invoke("ls", "--json").stdout)
    direct_table = invoke("ls").stdout
    assert len(provider.calls) == 2
    assert set(agent_json) == {"instances", "foreign_sessions"}
    assert without_time(agent_json["instances"]) == without_time(direct_json["instances"])
    assert agent_json["foreign_sessions"] == direct_json["foreign_sessions"]

    assert columns(agent_table)[:3] == columns(direct_table)[:3]
    assert agent_table.splitlines()[3:] == direct_table.splitlines()[3:]
    assert "sup-ghost" in agent_table


def test_plain_ls_runs_without_click_and_asks_the_agent(
    bots: list[str], served: tuple[SnapshotServer, Provider], paths: Paths
) -> None:
    _, provider = served
    code = (
        "import contextlib, io, sys\n"
        "from supervisor.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "    main(['ls', '--json', '--no-foreign'])\n"
        f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
        "print(json.dumps({'heavy': heavy, 'out': json.loads(out.getvalue())}))\n"
    ).replace("import contextlib", "import json, contextlib")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    result = json.loads(done.stdout)
    assert result["heavy"] == []
    assert provider.calls == [([], False)]
    assert [r["name"] for r in result["out"]["instances"]] == bots
    assert result["out"]["foreign_sessions"] == []
    # The table printed without click is the one click's `ls` prints.
    plain = subprocess.run([sys.executable, "-m", "supervisor", "ls"], capture_output=True, text=True, check=True)
    assert len(provider.calls) == 2
    through_click = invoke("ls").stdout
    assert len(provider.calls) == 3
    assert columns(plain.stdout) == columns(through_click)
    assert "sup-ghost" in plain.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["ls", "--json"],
        ["ls", "--no-foreign", "a-1", "b_2"],
        ["--home", "/x", "--tmux-socket=s", "ls"],
    ],
    ids=["flags", "names", "global-options"],
)
def test_plain_ls_is_recognised(argv: list[str]) -> None:
    assert listing.parse_plain_ls(argv) is not None


@pytest.mark.parametrize(
    "argv",
    [
        ["ls", "--help"],
        ["ls", "-h"],
        ["--debug", "ls"],
        ["ls", "Bad.Name"],
        ["ls", "--jsn"],
        ["status", "ls"],
        ["--home"],
        ["--home", "ls"],
    ],
    ids=["help", "short-help", "debug", "bad-name", "typo", "other-command", "home-without-value", "home-eats-ls"],
)
def test_anything_but_a_plain_ls_goes_to_click(argv: list[str]) -> None:
    assert listing.parse_plain_ls(argv) is None


def test_click_settings_in_the_environment_go_to_click(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERVISOR_LS_JSON", "1")
    assert listing.parse_plain_ls(["ls"]) is None


# -- fallbacks -------------------------------------------------------------------


def serve_raw(path: Path, answer: Callable[[socket.socket], object]) -> Callable[[], None]:
    """A stand-in agent that answers ``answer(conn)`` to one client: to test replies the real server never sends."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def run() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                answer(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def stop() -> None:
        listener.close()
        thread.join(timeout=5)

    return stop


@pytest.mark.parametrize(
    "reply",
    [b"not json", b'{"ok": false, "error": "x"}', b'{"ok": true, "instances": "x", "foreign": []}', b"[1]", b""],
    ids=["garbage", "not-ok", "bad-shape", "not-an-object", "closed"],
)
def test_a_bad_reply_falls_back(tmp_path: Path, reply: bytes) -> None:
    path = tmp_path / "a.sock"

    def answer(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(reply)

    stop = serve_raw(path, answer)
    try:
        assert ask(path) is None
    finally:
        stop()


def test_no_answer_in_time_falls_back(tmp_path: Path) -> None:
    path = tmp_path / "a.sock"
    release = threading.Event()
    stop = serve_raw(path, lambda conn: release.wait(10))
    try:
        assert ask(path, timeout=0.2) is None
    finally:
        release.set()
        stop()


def test_a_missing_or_stale_socket_falls_back(manager: Manager, paths: Paths, bots: list[str]) -> None:
    assert ask(paths.agent_socket) is None
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(paths.agent_socket))  # bound, never listening: what a killed agent leaves behind
    stale.close()
    assert stat.S_ISSOCK(paths.agent_socket.lstat().st_mode)
    assert ask(paths.agent_socket) is None
    records = json.loads(invoke("ls", "--json", "--no-foreign").stdout)["instances"]
    assert [r["name"] for r in records] == bots
    # The next agent replaces the stale socket.
    server = SnapshotServer(paths.agent_socket, Provider(manager))
    try:
        assert server.start()
        assert ask(paths.agent_socket, foreign=False) is not None
    finally:
        server.close()
    assert not paths.agent_socket.exists()


def test_an_error_of_the_agent_falls_back_to_the_direct_error(
    served: tuple[SnapshotServer, Provider], paths: Paths
) -> None:
    _, provider = served
    with pytest.raises(InstanceNotFound):
        listing.collect(paths, ["nope"], foreign=False)
    assert provider.calls == [(["nope"], False)]
    result = invoke("ls", "nope", code=1)
    assert result.stderr.startswith("Error: instance 'nope' not found.")


def test_another_tmux_server_is_not_answered_for(served: tuple[SnapshotServer, Provider], paths: Paths) -> None:
    _, provider = served
    assert ask(paths.agent_socket, tmux_socket="someone-else") is None
    assert provider.calls == []
    assert ask(paths.agent_socket, tmux_socket=paths.tmux_socket) == {"instances": [], "foreign": []}


# -- the server ------------------------------------------------------------------


def test_socket_is_private_and_removed_on_close(served: tuple[SnapshotServer, Provider], paths: Paths) -> None:
    server, _ = served
    assert stat.S_IMODE(paths.agent_socket.stat().st_mode) == 0o600
    server.close()
    assert not paths.agent_socket.exists()


def test_a_second_server_leaves_a_live_socket_and_other_files_alone(
    served: tuple[SnapshotServer, Provider], paths: Paths, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    second = SnapshotServer(paths.agent_socket, lambda names, foreign: {"instances": [], "foreign": []})
    assert not second.start()
    second.close()
    assert ask(paths.agent_socket) is not None  # the first one still serves
    plain = tmp_path / "plain"
    plain.write_text("keep")
    with caplog.at_level(logging.WARNING):
        assert not SnapshotServer(plain, lambda names, foreign: {}).start()
    assert plain.read_text() == "keep"
    assert "not a socket" in caplog.text


def test_a_path_too_long_for_a_unix_socket_is_logged_and_not_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / ("d" * 120) / "agent.sock"
    with caplog.at_level(logging.WARNING):
        server = SnapshotServer(path, lambda names, foreign: {})
        assert not server.start()
    assert "longer than 107 bytes" in caplog.text
    assert not server.serving
    server.close()
    assert ask(path) is None


def raw_request(path: Path, payload: bytes) -> t.Any:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        conn.connect(str(path))
        conn.sendall(payload)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return json.loads(data)


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"x" * (MAX_REQUEST + 10) + b"\n", "request longer than"),
        (b"{]\n", "not JSON"),
        (b'{"op": "rm"}\n', "unknown op"),
        (b'{"op": "ls", "names": "a"}\n', "'names' must be a list"),
    ],
    ids=["too-long", "not-json", "unknown-op", "bad-names"],
)
def test_bad_requests_get_an_error(
    served: tuple[SnapshotServer, Provider], paths: Paths, payload: bytes, error: str
) -> None:
    _, provider = served
    reply = raw_request(paths.agent_socket, payload)
    assert reply["ok"] is False
    assert error in reply["error"]
    assert provider.calls == []


def test_a_peer_of_another_uid_is_refused(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to connect as another uid")
    # The venv's interpreter may sit in root's home; the client needs one that uid 65534 may run.
    python = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.access(p, os.X_OK)), None)
    if python is None:
        pytest.skip("no system python3 for the other uid")
    # A folder others may enter, and the socket opened up, so only SO_PEERCRED stands in the way.
    folder = Path(f"/tmp/sup-snap-{os.getpid()}")
    folder.mkdir(mode=0o755)
    try:
        path = folder / "a.sock"
        calls: list[list[str]] = []

        def provide(names: list[str], foreign: bool) -> dict[str, t.Any]:
            calls.append(names)
            return {"instances": [], "foreign": []}

        server = SnapshotServer(path, provide)
        assert server.start()
        path.chmod(0o666)
        code = (
            "import socket\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(5)\n"
            f"s.connect({str(path)!r})\n"
            "try:\n"
            "    s.sendall(b'{\"op\": \"ls\"}\\n'); print(repr(s.recv(4096)) or 'closed')\n"
            "except OSError as e:\n"
            "    print('closed', type(e).__name__)\n"
        )
        nobody = subprocess.run(
            [python, "-I", "-c", code], user=65534, cwd="/", capture_output=True, text=True, check=True
        )
        assert nobody.stdout.startswith(("b''", "closed")), nobody.stdout  # no answer, whatever the timing
        assert calls == []
        assert ask(path) == {"instances": [], "foreign": []}  # the owner is still served
        server.close()
    finally:
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()

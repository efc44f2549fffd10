from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import typing as t
from pathlib import Path

import git
import pytest

from supervisor.core.manager import Manager, session_name, strip_exec
from supervisor.errors import (
    InstallError,
    InstanceError,
    InstanceExists,
    InstanceNotFound,
    InstanceNotRunning,
    InstanceRunning,
    InvalidName,
    SessionError,
    UpdateRolledBack,
)
from supervisor.paths import Paths
from tests.conftest import DATA, RECIPES, commit_files, make_origin, wait_until

TICKER = str(RECIPES / "ticker.yaml")


@pytest.fixture(params=["tmux", "screen"])
def backend(request: pytest.FixtureRequest) -> str:
    name = t.cast("str", request.param)
    request.getfixturevalue("tmux_socket" if name == "tmux" else "screendir")
    return name


def state_of(manager: Manager, name: str) -> str:
    return manager.status([name])[0].state


def test_lifecycle_new_start_send_tail_logs_stop(manager: Manager, backend: str, bot_origin: Path) -> None:
    created = manager.new("mm-1", TICKER, repo=str(bot_origin), backend=backend)
    assert created.state == "stopped"
    assert created.commit == git.Repo(bot_origin).head.commit.hexsha
    assert (Path(created.checkout) / "bot.py").exists()
    assert "installed" in manager.paths.install_log("mm-1").read_text()

    [started] = manager.start(["mm-1"])
    assert started.changed
    status = manager.status(["mm-1"])[0]
    assert status.state == "running"
    assert status.session == session_name("mm-1")
    assert status.pid is not None
    proc_cmdline = Path(f"/proc/{status.pid}/cmdline").read_bytes().split(b"\0")
    assert b"bot.py" in proc_cmdline
    assert status.rss is not None and status.rss > 1_000_000
    assert status.uptime is not None and status.uptime >= 0

    again = manager.start(["mm-1"])[0]
    assert not again.changed
    assert "already running" in again.message

    text = 'hello $(id) ; rm -rf / | & "q" ^M \\n'
    manager.send("mm-1", text)
    wait_until(lambda: f"echo: {text}" in manager.tail("mm-1", 50), message="the echo on screen")
    wait_until(lambda: f"echo: {text}" in manager.log_path("mm-1").read_text(), message="the echo in the log")
    assert "ticker-bot ready" in manager.log_path("mm-1").read_text()

    [stopped] = manager.stop(["mm-1"], timeout=10)
    assert stopped.step == "console"
    assert not Path(f"/proc/{status.pid}").exists()
    after = manager.status(["mm-1"])[0]
    assert (after.state, after.desired, after.pid) == ("stopped", "stopped", None)
    log = manager.log_path("mm-1").read_text()
    assert "stopped strategy" in log and "bye" in log

    noop = manager.stop(["mm-1"])[0]
    assert not noop.changed
    assert noop.step == "already-stopped"


def test_crashed_and_exited_bots_are_told_apart(manager: Manager, backend: str, bot_origin: Path) -> None:
    manager.new("crash", str(RECIPES / "crasher.yaml"), repo=str(bot_origin), backend=backend)
    manager.start(["crash"])
    wait_until(lambda: state_of(manager, "crash") == "crashed", message="crashed state")
    assert manager.status(["crash"])[0].exit_code == 3

    manager.new("quits", TICKER, repo=str(bot_origin), backend=backend)
    manager.start(["quits"])
    manager.send("quits", "exit")
    wait_until(lambda: state_of(manager, "quits") == "exited", message="exited state")
    assert manager.status(["quits"])[0].exit_code == 0


def test_a_bot_whose_session_is_killed_is_crashed(manager: Manager, backend: str, bot_origin: Path) -> None:
    manager.new("gone", TICKER, repo=str(bot_origin), backend=backend)
    manager.start(["gone"])
    pid = manager.status(["gone"])[0].pid
    assert pid
    manager.backend(backend).kill_session("sup-gone")
    wait_until(lambda: state_of(manager, "gone") != "running", message="the bot to go")
    status = manager.status(["gone"])[0]
    assert (status.state, status.exit_code, status.desired) == ("crashed", None, "running")


def test_stop_escalates_to_sigkill(manager: Manager, bot_origin: Path) -> None:
    manager.new("stub", str(RECIPES / "stubborn.yaml"), repo=str(bot_origin))
    manager.start(["stub"])
    pid = manager.status(["stub"])[0].pid
    assert pid
    [result] = manager.stop(["stub"], timeout=0.5)
    assert result.step == "sigkill"
    assert "SIGKILL" in result.message
    assert manager.status(["stub"])[0].state == "stopped"


def test_restart_counts_and_changes_pid(manager: Manager, bot_origin: Path) -> None:
    manager.new("r1", TICKER, repo=str(bot_origin))
    manager.start(["r1"])
    before = manager.status(["r1"])[0].pid
    [result] = manager.restart(["r1"])
    after = manager.status(["r1"])[0]
    assert result.changed and after.state == "running"
    assert after.pid != before
    assert after.restarts == 1


def test_second_instance_reuses_mirror(manager: Manager, bot_origin: Path) -> None:
    manager.new("a", TICKER, repo=str(bot_origin))
    manager.new("b", TICKER, repo=str(bot_origin))
    mirrors = list(manager.paths.mirrors.glob("*.git"))
    assert len(mirrors) == 1
    for name in ("a", "b"):
        checkout = Path(manager.status([name])[0].checkout)
        alternates = (checkout / ".git/objects/info/alternates").read_text().strip()
        assert Path(alternates).resolve() == (mirrors[0] / "objects").resolve()
        assert git.Repo(checkout).remotes.origin.url == str(bot_origin)


def test_failed_install_is_recorded_and_retried(manager: Manager, bot_origin: Path) -> None:
    with pytest.raises(InstallError) as info:
        manager.new("bad", str(RECIPES / "failing-install.yaml"), repo=str(bot_origin))
    assert "install step 2/2" in str(info.value)
    assert "exit code 7" in str(info.value)
    assert "about to fail" in info.value.log_tail
    assert state_of(manager, "bad") == "install-failed"
    with pytest.raises(InstanceError, match="cannot start: it is install-failed"):
        manager.start(["bad"])
    (Path(manager.status(["bad"])[0].checkout) / ".ok").write_text("")
    assert manager.install("bad").state == "stopped"


def test_failed_clone_leaves_nothing(manager: Manager, tmp_path: Path) -> None:
    with pytest.raises(InstallError):
        manager.new("ghost", TICKER, repo=str(tmp_path / "no-such-repo"))
    assert manager.registry.all() == {}
    assert not manager.paths.instance_dir("ghost").exists()


def test_names_and_duplicates_checked_before_disk(manager: Manager, bot_origin: Path) -> None:
    with pytest.raises(InvalidName):
        manager.new("Bad.Name", TICKER, repo=str(bot_origin))
    assert not (manager.paths.home / "instances").exists()
    manager.new("dup", TICKER, repo=str(bot_origin))
    with pytest.raises(InstanceExists):
        manager.new("dup", TICKER, repo=str(bot_origin))


def test_update_moves_forward_and_rolls_back(manager: Manager, bot_origin: Path) -> None:
    manager.new("u", TICKER, repo=str(bot_origin))
    manager.start(["u"])
    origin = git.Repo(bot_origin)
    first = origin.head.commit.hexsha
    second = commit_files(origin, {"NOTES": "v2\n"}, "second")
    status = manager.update("u")
    assert status.commit == second
    assert status.state == "running"
    with pytest.raises(InstallError):
        manager.update("u", ref="no-such-branch")
    status = manager.status(["u"])[0]
    assert status.commit == second
    assert status.state == "running"
    assert first != second


def test_remove_refuses_running_without_force(manager: Manager, bot_origin: Path) -> None:
    manager.new("rm1", TICKER, repo=str(bot_origin))
    manager.start(["rm1"])
    with pytest.raises(InstanceRunning, match="refusing to remove"):
        manager.remove("rm1")
    checkout = Path(manager.status(["rm1"])[0].checkout)
    manager.remove("rm1", force=True, purge=True)
    assert not checkout.exists()
    assert manager.registry.all() == {}


def test_send_needs_running_bot_and_one_line(manager: Manager, bot_origin: Path) -> None:
    manager.new("s", TICKER, repo=str(bot_origin))
    with pytest.raises(InstanceNotRunning) as info:
        manager.send("s", "status")
    assert info.value.exit_code == 3
    manager.start(["s"])
    with pytest.raises(SessionError, match=r"holds control characters \(U\+000A\)"):
        manager.send("s", "a\nb")


def test_relay_renders_console_lines_and_captures_reply(manager: Manager, bot_origin: Path) -> None:
    manager.new("rl", TICKER, repo=str(bot_origin))
    manager.start(["rl"])
    assert manager.console_line("rl", "start", {"script": "x.py", "conf": None}) == "start --script x.py"
    reply = manager.relay("rl", "status", {}, capture=True)
    assert "status: running=False" in reply.text
    with pytest.raises(InstanceError, match="no console command for 'history'"):
        manager.relay("rl", "history", {})


def test_adopt_foreign_screen_session(manager: Manager, screendir: Path, tmp_path: Path) -> None:
    bot = tmp_path / "handmade"
    bot.mkdir()
    (bot / "bot.py").write_text((RECIPES.parent / "ticker_bot.py").read_text())
    (manager.paths.user_recipes).mkdir(parents=True)
    (manager.paths.user_recipes / "ticker.yaml").write_text((RECIPES / "ticker.yaml").read_text())
    subprocess.run(
        ["screen", "-dmS", "hbot1", "bash", "-c", f"cd {bot} && {sys.executable} bot.py ticker_marker; exec bash"],
        check=True,
    )
    found = wait_until(lambda: [f for f in manager.foreign_sessions() if f.session == "hbot1"], timeout=10)
    assert found[0].recipe == "ticker"
    assert found[0].cwd == str(bot)
    status = manager.adopt("hbot1", "hand-1")
    assert status.state == "running"
    assert status.adopted
    assert status.checkout == str(bot)
    assert not [f for f in manager.foreign_sessions() if f.session == "hbot1"]
    [result] = manager.stop(["hand-1"], timeout=10)
    assert result.step == "console"
    assert manager.status(["hand-1"])[0].state == "stopped"


def test_many_concurrent_cli_processes_lose_no_record(isolated_env: Path, tmux_socket: str, bot_origin: Path) -> None:
    env = {**os.environ, "SUPERVISOR_HOME": str(isolated_env), "SUPERVISOR_TMUX_SOCKET": tmux_socket}
    script = (
        f"{sys.executable} -m supervisor new c$0 -r {TICKER} --repo {bot_origin} >/dev/null && "
        f"{sys.executable} -m supervisor start c$0 --no-wait >/dev/null"
    )
    procs = [
        subprocess.Popen(["bash", "-c", script, str(i)], env=env, stderr=subprocess.PIPE, text=True) for i in range(20)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 20, errors
    listing = subprocess.run(
        [sys.executable, "-m", "supervisor", "ls", "--json", "--no-foreign"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    records = json.loads(listing.stdout)["instances"]
    assert sorted(r["name"] for r in records) == sorted(f"c{i}" for i in range(20))
    mgr = Manager(Paths.from_env(isolated_env, tmux_socket))
    wait_until(lambda: all(s.state == "running" for s in mgr.status()), timeout=30, message="all 20 running")
    assert len(list(mgr.paths.mirrors.glob("*.git"))) == 1
    mgr.stop(sorted(r["name"] for r in records), timeout=5)
    assert all(s.state == "stopped" for s in mgr.status())


# -- lifecycle of real bots: headless stop, exec, update rollback ---------------------------------

HEADLESS = str(RECIPES / "headless.yaml")


@pytest.fixture
def lifecycle_origin(tmp_path: Path) -> Path:
    origin = tmp_path / "lifecycle-origin"
    make_origin(origin, {"bot.py": (DATA / "lifecycle_bot.py").read_text(), "VERSION": "1\n"})
    return origin


def headless_recipe(tmp_path: Path, **run: str) -> str:
    """The headless test recipe with some ``run`` keys replaced (a YAML line each)."""
    text = (RECIPES / "headless.yaml").read_text()
    for key, line in run.items():
        text = re.sub(rf"^  {key}:.*$", f"  {key}: {line}", text, flags=re.MULTILINE)
    path = tmp_path / "recipes" / "headless.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return str(path)


def test_headless_stop_sends_the_signal_to_the_bot_not_console_lines(
    manager: Manager, backend: str, lifecycle_origin: Path
) -> None:
    manager.new("hl", HEADLESS, repo=str(lifecycle_origin), backend=backend, secret_values={"password": b"pw"})
    manager.start(["hl"])
    status = manager.status(["hl"])[0]
    assert status.state == "running"
    [result] = manager.stop(["hl"])
    assert (result.step, result.changed) == ("stop-signal", True)
    assert result.message == "stopped 'hl' by its stop signal (SIGINT)."
    log = manager.paths.console_log("hl").read_text()
    assert "winding down: cancelling orders" in log
    assert "typed-quit-line" not in log  # no console quit line was typed
    assert manager.paths.exit_file("hl").read_text().split()[0] == "0"  # the bot ended itself, cleanly
    assert manager.status(["hl"])[0].state == "stopped"


def test_headless_stop_escalates_when_the_grace_runs_out(
    manager: Manager, lifecycle_origin: Path, tmp_path: Path
) -> None:
    recipe = headless_recipe(tmp_path, stop="{signal: SIGINT, grace: 0.5}")
    manager.new(
        "deaf", recipe, repo=str(lifecycle_origin), settings=["ignore_sigint=1"], secret_values={"password": b"pw"}
    )
    manager.start(["deaf"])
    [result] = manager.stop(["deaf"])
    assert result.step == "sigterm"
    assert "winding down" not in manager.paths.console_log("deaf").read_text()
    assert manager.status(["deaf"])[0].state == "stopped"


def test_headless_stop_command_runs_in_the_checkout_with_the_run_environment(
    manager: Manager, lifecycle_origin: Path, tmp_path: Path
) -> None:
    recipe = headless_recipe(tmp_path, stop="""{command: 'printf "%s" "$BOT_MODE" > "$BOT_STOP_FLAG"', grace: 10}""")
    flag = tmp_path / "stop.flag"
    manager.new(
        "cmd", recipe, repo=str(lifecycle_origin), settings=[f"stop_flag={flag}"], secret_values={"password": b"pw"}
    )
    manager.start(["cmd"])
    [result] = manager.stop(["cmd"])
    assert result.step == "stop-command"
    assert result.message == "stopped 'cmd' by its stop command."
    log = manager.paths.console_log("cmd").read_text()
    assert "stop flag says: headless" in log  # the command saw run.env
    assert "winding down" in log


def test_exec_in_run_command_is_started_and_its_exit_code_recorded(
    manager: Manager, lifecycle_origin: Path, tmp_path: Path
) -> None:
    # No ready pattern: before, start waited for a child of run.sh that exec had replaced.
    recipe = headless_recipe(tmp_path, ready="''")
    manager.new("ex", recipe, repo=str(lifecycle_origin), secret_values={"password": b"pw"})
    assert "exec " in manager.recipe_for(manager.registry.get("ex")).run.command
    [started] = manager.start(["ex"])
    assert started.ok, started.message
    status = manager.status(["ex"])[0]
    assert status.state == "running"
    assert b"bot.py" in Path(f"/proc/{status.pid}/cmdline").read_bytes()
    os.kill(t.cast("int", status.pid), signal.SIGKILL)
    wait_until(lambda: state_of(manager, "ex") == "crashed", message="crashed state")
    assert manager.status(["ex"])[0].exit_code == 137  # recorded by run.sh: the bot was its child

    # An exec further inside the command replaces the wrapper: start still sees the bot (no exit code then).
    inner = headless_recipe(tmp_path, ready="''", command="'cd . && exec {python} bot.py'")
    manager.new("ex3", inner, repo=str(lifecycle_origin), secret_values={"password": b"pw"})
    [inner_started] = manager.start(["ex3"])
    assert inner_started.ok, inner_started.message
    assert manager.status(["ex3"])[0].state == "running"

    manager.new("ex2", HEADLESS, repo=str(lifecycle_origin), settings=["crash=5"], secret_values={"password": b"pw"})
    with pytest.raises(InstanceError, match="exited during start with exit code 5"):
        manager.start(["ex2"])


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("exec python bot.py", "python bot.py"),
        ("  exec   env A=1 ./bot", "env A=1 ./bot"),
        ("exec 2>&1; python bot.py", "exec 2>&1; python bot.py"),
        ("exec >log python", "exec >log python"),
        ("exec -a hb python", "exec -a hb python"),
        ("executor run", "executor run"),
        ("python bot.py", "python bot.py"),
    ],
)
def test_strip_exec(command: str, expected: str) -> None:
    assert strip_exec(command) == expected


def test_update_to_a_missing_ref_or_the_same_commit_leaves_the_bot_alone(manager: Manager, bot_origin: Path) -> None:
    manager.new("u2", TICKER, repo=str(bot_origin))
    manager.start(["u2"])
    manager.relay("u2", "start", {})
    pid = manager.status(["u2"])[0].pid
    with pytest.raises(InstallError, match="ref 'typo' not found"):
        manager.update("u2", ref="typo")
    same = manager.update("u2")  # nothing new on main
    assert same.state == "running"
    assert manager.status(["u2"])[0].pid == pid
    assert "stopped strategy" not in manager.paths.console_log("u2").read_text()  # 'stop' was never typed


def test_update_that_does_not_come_up_rolls_back_code_and_config(manager: Manager, lifecycle_origin: Path) -> None:
    manager.new("up", HEADLESS, repo=str(lifecycle_origin), secret_values={"password": b"pw"})
    checkout = Path(manager.registry.get("up").checkout)
    (checkout / "conf" / "bot.yml").write_text("exchange: paper\n")
    manager.start(["up"])
    old_commit = manager.status(["up"])[0].commit
    origin = git.Repo(lifecycle_origin)
    # v2 adds a config key v1 refuses, then fails before it is ready (as 2.16 -> 2.15 did).
    new_commit = commit_files(origin, {"VERSION": "2\n", "CRASH": "4\n"}, "v2")
    lines: list[str] = []
    with pytest.raises(UpdateRolledBack) as info:
        manager.update("up", on_line=lines.append)
    message = str(info.value)
    assert f"update to main ({new_commit[:12]}) installed but did not come up" in message
    assert f"rolled back code and config and started {t.cast('str', old_commit)[:12]} again" in message
    assert info.value.code == "update_rolled_back"
    status = manager.status(["up"])[0]
    assert (status.state, status.commit) == ("running", old_commit)
    assert (checkout / "conf" / "bot.yml").read_text() == "exchange: paper\n"  # v2's key is gone
    assert not (checkout / "conf" / "v2-only.yml").exists()
    assert (checkout / "conf" / ".password_verification").exists()
    assert "crashing before ready with code 4" in manager.paths.console_log("up").read_text()
    # The bot's last words are in the message and in last_error, not cut at "Last output:".
    assert "exited during start with exit code 4. Last output:" in message
    assert "crashing before ready with code 4)" in message
    assert "crashing before ready with code 4" in (manager.registry.get("up").last_error or "")
    assert any("rolling back" in line for line in lines)

    # A good v3 goes through, and its config changes stay.
    good = commit_files(origin, {"VERSION": "2\n", "CRASH": "0\n"}, "v3")
    status = manager.update("up")
    assert (status.state, status.commit) == ("running", good)
    assert "new_key: 1" in (checkout / "conf" / "bot.yml").read_text()


def test_update_that_cannot_copy_the_config_aside_changes_nothing(manager: Manager, lifecycle_origin: Path) -> None:
    manager.new("snap", HEADLESS, repo=str(lifecycle_origin), secret_values={"password": b"pw"})
    manager.start(["snap"])
    old_commit = manager.status(["snap"])[0].commit
    commit_files(git.Repo(lifecycle_origin), {"NOTES": "v2\n"}, "v2")
    manager.paths.config_snapshot("snap").write_text("in the way")  # a file where the folder goes
    with pytest.raises(InstallError, match="could not copy its config files aside before the update"):
        manager.update("snap")
    status = manager.status(["snap"])[0]
    assert (status.state, status.commit) == ("running", old_commit)


STRATEGY_RECIPE = """\
name: strategy-bot
source: {repo: set-by-test, ref: main}
vars:
  data: '{home}/data-of-{name}'
install: ['mkdir -p {data}']
run:
  command: '{python} bot.py --data {data}'
  strategy_args: '[--conf {conf}][ --script {script}]'
  ready: 'ticker-bot ready'
  ready_timeout: 15
console:
  quit: [exit]
"""


def _cmdline(manager: Manager, name: str) -> list[str]:
    import psutil

    pid = wait_until(lambda: manager.status([name])[0].pid, timeout=10, message=f"{name} has a pid")
    return list(psutil.Process(pid).cmdline())


def test_launch_with_a_strategy_and_crash_restart_keeps_it(
    manager: Manager, bot_origin: Path, tmp_path: Path, isolated_env: Path
) -> None:
    """A start with a strategy passes it through run.strategy_args (quoted); a crash restart reuses it."""
    recipe = tmp_path / "strategy-bot.yaml"
    recipe.write_text(STRATEGY_RECIPE)
    manager.new("sb", str(recipe), repo=str(bot_origin))
    assert (isolated_env / "data-of-sb").is_dir()  # '{home}' inside a variable's value is filled in
    with pytest.raises(InstanceError, match=r"conf '\.\./x': must be a file name"):
        manager.start(["sb"], strategy={"conf": "../x"})
    with pytest.raises(InstanceError, match=r"script 'a;b': must be a file name"):
        manager.start(["sb"], strategy={"script": "a;b"})
    manager.start(["sb"], strategy={"conf": "probe.yml", "script": None})
    argv = _cmdline(manager, "sb")
    assert argv[-4:] == ["--data", str(isolated_env / "data-of-sb"), "--conf", "probe.yml"]
    assert manager.registry.get("sb").strategy == {"conf": "probe.yml"}

    os.kill(manager.status(["sb"])[0].pid or 0, signal.SIGKILL)
    wait_until(lambda: state_of(manager, "sb") in ("crashed", "exited"), timeout=10, message="the bot died")
    result = manager.restart_crashed("sb")
    assert result.changed
    assert _cmdline(manager, "sb")[-2:] == ["--conf", "probe.yml"]

    manager.stop(["sb"])
    manager.start(["sb"])  # a plain start: no strategy, and none remembered
    assert "--conf" not in _cmdline(manager, "sb")
    assert manager.registry.get("sb").strategy is None


def test_graceful_stop_records_the_bots_exit_code(manager: Manager, bot_origin: Path) -> None:
    """The wrapper writes the exit code after the bot quits; the session is not killed before it can."""
    manager.new("ec", TICKER, repo=str(bot_origin))
    for _ in range(3):
        manager.start(["ec"])
        [result] = manager.stop(["ec"])
        assert result.step == "console"
        record = manager._exit_record("ec")
        assert record is not None
        assert record.code == 0
        manager.paths.exit_file("ec").unlink()


def test_update_brings_the_bot_back_with_its_strategy(
    manager: Manager, bot_origin: Path, tmp_path: Path, isolated_env: Path
) -> None:
    recipe = tmp_path / "strategy-bot.yaml"
    recipe.write_text(STRATEGY_RECIPE)
    manager.new("su", str(recipe), repo=str(bot_origin))
    manager.start(["su"], strategy={"conf": "probe.yml"})
    commit_files(git.Repo(bot_origin), {"NEWS": "v2\n"}, "second")
    manager.update("su")
    assert _cmdline(manager, "su")[-2:] == ["--conf", "probe.yml"]
    assert manager.registry.get("su").strategy == {"conf": "probe.yml"}


def test_start_without_wait_returns_once_every_bot_process_lives(
    manager: Manager, lifecycle_origin: Path, tmp_path: Path
) -> None:
    """``wait=False`` launches all, waits for their processes only; they are ``starting`` until the ready line."""
    flag = tmp_path / "ready.flag"
    names = ["nw1", "nw2", "nw3"]
    for name in names:
        manager.new(
            name,
            HEADLESS,
            repo=str(lifecycle_origin),
            settings=[f"ready_flag={flag}"],
            secret_values={"password": b"pw"},
        )
    results = manager.start(names, wait=False)
    assert [(r.name, r.changed, r.ok) for r in results] == [(name, True, True) for name in names]
    for result in results:
        assert result.status is not None
        assert (result.status.state, result.status.is_running) == ("starting", True)
        assert b"bot.py" in Path(f"/proc/{result.status.pid}/cmdline").read_bytes()
    assert all(manager.registry.get(name).desired == "running" for name in names)
    again = manager.start(["nw1"], wait=False)[0]  # no wait: a starting bot is not joined
    assert again.status is not None
    assert (again.changed, again.message) == (False, f"instance 'nw1' is already starting (pid {again.status.pid}).")
    flag.touch()
    wait_until(lambda: {s.state for s in manager.status(names)} == {"running"}, timeout=15, message="all ready")


def test_the_agent_reads_records_recipes_and_files_through_public_methods(manager: Manager, bot_origin: Path) -> None:
    manager.new("pa", TICKER, repo=str(bot_origin))
    assert manager.names() == ["pa"]
    assert (manager.has("pa"), manager.has("nope")) == (True, False)
    assert manager.record("pa") == manager.records()["pa"]
    assert manager.recipe("pa").name == "ticker"
    assert manager.ready_timeout("pa") == manager.recipe("pa").run.ready_timeout
    assert manager.ready_timeout("nope", default=7.0) == 7.0
    assert manager.console_log("pa") == manager.paths.console_log("pa")
    assert manager.exit_file("pa") == manager.paths.exit_file("pa")
    assert (manager.audit_log, manager.registry_file) == (manager.paths.audit_log, manager.paths.registry)
    manager.rotate_log("pa")  # no log yet: nothing to do, no error
    manager.use_caches(sessions=0.5, commits=30.0)
    assert (manager.session_cache_ttl, manager.commit_cache_ttl) == (0.5, 30.0)
    manager.start(["pa"])
    assert manager.snapshot(["pa"]).status("pa").state == "running"
    with pytest.raises(InstanceNotFound):
        manager.record("nope")


def test_an_update_whose_install_fails_says_it_rolled_back_and_restarted(manager: Manager, bot_origin: Path) -> None:
    manager.new("ub", TICKER, repo=str(bot_origin))
    manager.start(["ub"])
    old = manager.status(["ub"])[0].commit or ""
    origin = git.Repo(bot_origin)
    origin.git.checkout("-b", "broken-build")
    commit_files(origin, {"install.sh": "echo compile error; exit 5\n"}, "broken build")
    origin.git.checkout("main")
    origin.close()
    with pytest.raises(UpdateRolledBack) as info:
        manager.update("ub", ref="broken-build")
    message = str(info.value)
    assert message.startswith("instance 'ub': update to broken-build failed (install step 1/1 'sh install.sh' failed")
    assert "fix the cause and run 'supervisor install ub'" in message
    assert f"rolled back code and config to {old[:12]} and started it again." in message
    status = manager.status(["ub"])[0]
    assert (status.state, status.commit) == ("running", old)
    last_error = manager.registry.get("ub").last_error or ""
    assert last_error.startswith("update to broken-build failed and was rolled back: install step 1/1")

from __future__ import annotations

import shutil
import typing as t
from pathlib import Path

import pytest

from supervisor.core import status
from supervisor.core.manager import Manager
from supervisor.core.readiness import Seen
from supervisor.core.registry import DESIRED_RUNNING, DESIRED_STOPPED, INSTALL_FAILED, INSTALLED, INSTALLING
from supervisor.core.status import ExitRecord, Facts, console_state, derive_state, this_run_exit_code
from supervisor.errors import InstanceNotFound, ReadyTimeout
from supervisor.states import State
from tests.conftest import RECIPES, wait_until


class StateCase(t.NamedTuple):
    test_id: str
    facts: Facts
    expected: State


def installed(**changes: t.Any) -> Facts:
    return Facts(lifecycle=INSTALLED, **changes)


STATE_CASES = [
    StateCase("install-running", Facts(INSTALLING, install_running=True), State.INSTALLING),
    StateCase("install-died", Facts(INSTALLING, install_running=False), State.INSTALL_FAILED),
    StateCase("install-failed", Facts(INSTALL_FAILED, alive=True, has_session=True), State.INSTALL_FAILED),
    StateCase("alive-ready", installed(alive=True, has_session=True, desired=DESIRED_RUNNING), State.RUNNING),
    StateCase(
        "alive-before-ready-line",
        installed(alive=True, has_session=True, desired=DESIRED_RUNNING, console=State.STARTING),
        State.STARTING,
    ),
    StateCase(
        "alive-at-login",
        installed(alive=True, has_session=True, desired=DESIRED_RUNNING, console=State.WAITING_LOGIN),
        State.WAITING_LOGIN,
    ),
    StateCase("alive-but-meant-stopped", installed(alive=True, desired=DESIRED_STOPPED), State.RUNNING),
    StateCase("session-without-bot-yet", installed(has_session=True, desired=DESIRED_RUNNING), State.STARTING),
    StateCase(
        "adopted-session-without-bot",
        installed(has_session=True, adopted=True, desired=DESIRED_RUNNING),
        State.CRASHED,
    ),
    StateCase("session-left-meant-stopped", installed(has_session=True, desired=DESIRED_STOPPED), State.STOPPED),
    StateCase("stopped", installed(desired=DESIRED_STOPPED), State.STOPPED),
    StateCase("stopped-wins-over-exit-code", installed(desired=DESIRED_STOPPED, exit_code=3), State.STOPPED),
    StateCase("fatal", installed(desired=DESIRED_RUNNING, fatal=True, exit_code=3), State.FATAL),
    StateCase("fatal-but-alive", installed(alive=True, desired=DESIRED_RUNNING, fatal=True), State.RUNNING),
    StateCase("fatal-and-stopped", installed(desired=DESIRED_STOPPED, fatal=True), State.FATAL),
    StateCase("exited-cleanly", installed(desired=DESIRED_RUNNING, exit_code=0), State.EXITED),
    StateCase("crashed-with-code", installed(desired=DESIRED_RUNNING, exit_code=3), State.CRASHED),
    StateCase("crashed-session-killed", installed(desired=DESIRED_RUNNING, exit_code=None), State.CRASHED),
]


@pytest.mark.parametrize("case", STATE_CASES, ids=[c.test_id for c in STATE_CASES])
def test_derive_state(case: StateCase) -> None:
    assert derive_state(case.facts) == case.expected


class ConsoleCase(t.NamedTuple):
    test_id: str
    adopted: bool
    has_ready_pattern: bool
    seen: Seen | None
    expected: State


CONSOLE_CASES = [
    ConsoleCase("no-pattern", False, False, Seen(0), State.RUNNING),
    ConsoleCase("untracked-launch", False, True, None, State.RUNNING),
    ConsoleCase("adopted", True, True, Seen(0), State.RUNNING),
    ConsoleCase("nothing-yet", False, True, Seen(0), State.STARTING),
    ConsoleCase("login-prompt", False, True, Seen(10, login=True), State.WAITING_LOGIN),
    ConsoleCase("ready", False, True, Seen(10, ready=True), State.RUNNING),
    ConsoleCase("ready-after-login", False, True, Seen(10, login=True, ready=True), State.RUNNING),
]


@pytest.mark.parametrize("case", CONSOLE_CASES, ids=[c.test_id for c in CONSOLE_CASES])
def test_console_state(case: ConsoleCase) -> None:
    assert (
        console_state(adopted=case.adopted, has_ready_pattern=case.has_ready_pattern, seen=case.seen) == case.expected
    )


class ExitCase(t.NamedTuple):
    test_id: str
    started_at: float | None
    record: ExitRecord | None
    expected: int | None


EXIT_CASES = [
    ExitCase("no-record", 100.0, None, None),
    ExitCase("this-run", 100.5, ExitRecord(3, 100.0), 3),  # run.sh writes whole seconds
    ExitCase("later", 100.0, ExitRecord(0, 130.0), 0),
    ExitCase("stale-from-an-earlier-run", 200.0, ExitRecord(3, 150.0), None),
    ExitCase("never-started", None, ExitRecord(1, 50.0), 1),
]


@pytest.mark.parametrize("case", EXIT_CASES, ids=[c.test_id for c in EXIT_CASES])
def test_this_run_exit_code(case: ExitCase) -> None:
    assert this_run_exit_code(case.started_at, case.record) == case.expected


TICKER = str(RECIPES / "ticker.yaml")


def test_one_snapshot_holds_every_part_of_a_look(manager: Manager, bot_origin: Path) -> None:
    manager.new("s1", TICKER, repo=str(bot_origin))
    manager.new("s2", TICKER, repo=str(bot_origin))
    manager.start(["s1"])
    look = manager.snapshot()
    assert [s.name for s in look] == ["s1", "s2"]
    assert set(look.records) == {"s1", "s2"}
    assert look.status("s1").state == "running"
    assert look.status("s2").state == "stopped"
    info = look.session("s1")
    assert info is not None and info.name == "sup-s1"
    assert look.session("s2") is None
    assert look.samples["s1"].alive
    assert look.table is not None and look.samples["s1"].pid in look.table
    assert [(s.name, s.state, s.pid) for s in manager.status()] == [(s.name, s.state, s.pid) for s in look]
    with pytest.raises(InstanceNotFound):
        look.status("nope")
    with pytest.raises(InstanceNotFound):
        manager.snapshot(["nope"])


def test_snapshot_reads_no_processes_when_no_bot_runs(manager: Manager, bot_origin: Path) -> None:
    manager.new("idle", TICKER, repo=str(bot_origin))
    look = manager.snapshot(["idle"])
    assert (look.table, look.samples) == (None, {})
    assert look.status("idle").state == "stopped"


def test_a_killed_bot_is_crashed_and_its_exit_code_kept(manager: Manager, bot_origin: Path) -> None:
    manager.new("k", str(RECIPES / "crasher.yaml"), repo=str(bot_origin))
    manager.start(["k"])
    wait_until(lambda: manager.snapshot(["k"]).status("k").state == "crashed", message="crashed")
    assert manager.snapshot(["k"]).status("k").exit_code == 3
    assert status.read_exit_record(manager.paths, "k") is not None


def test_a_stop_recorded_while_a_look_reads_the_sessions_is_what_the_look_judges_by(
    manager: Manager, bot_origin: Path, tmp_path: Path
) -> None:
    # A bot whose wrapper is still in its prelude: the session is up, the bot not yet, so it is starting.
    path = tmp_path / "slow-start.yaml"
    path.write_text(
        "name: slow-start\nsource: {repo: set-by-test, ref: main}\ninstall: ['sh install.sh']\n"
        f"run:\n  command: 'sleep 600'\n  prelude: '{shutil.which('sleep')} 600'\n  ready_timeout: 1\n"
    )
    manager.new("slow", str(path), repo=str(bot_origin))
    with pytest.raises(ReadyTimeout):  # its bot never comes: the session is left as it is
        manager.start(["slow"], wait=False)
    assert manager.snapshot(["slow"]).status("slow").state == "starting"
    parts = manager._parts  # the one seam between a look's registry read and its session read
    read_sessions = parts.sessions

    def sessions_after_a_stop_is_recorded(backends: t.Iterable[str]) -> t.Any:
        # What `supervisor stop` does first, from another process, while this look is under way.
        parts.registry.update("slow", desired=DESIRED_STOPPED)
        return read_sessions(backends)

    parts.sessions = sessions_after_a_stop_is_recorded  # type: ignore[method-assign]
    try:
        look = manager.snapshot(["slow"])
    finally:
        del parts.sessions
    # Judged by the intent read before the sessions, it was 'starting' (a bot being stopped shown as starting).
    assert look.status("slow").state == "stopped"
    assert look.records["slow"].desired == DESIRED_STOPPED
    manager.stop(["slow"])

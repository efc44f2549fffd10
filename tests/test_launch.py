"""The run wrapper (core/launch.py writes run.sh): the console gets what the bot printed, never bash's own reports."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import typing as t

import psutil
import pytest

from supervisor.core.launch import WRAPPER_LOG
from supervisor.core.status import read_exit_record
from supervisor.errors import InstanceError
from tests.conftest import wait_until
from tests.test_agent import HOST, agents, next_matching, watchers
from tests.test_manager import backend

if t.TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from supervisor.core.manager import Manager
    from tests.conftest import Broker
    from tests.test_agent import AgentRunner, Watcher

__all__ = ["agents", "backend", "watchers"]  # fixtures, used by name

# Prints on stdout and on stderr, then waits to be killed.
BOT = (
    "import sys, time; print('bot says out', flush=True); "
    "print('bot says err', file=sys.stderr, flush=True); time.sleep(600)"
)


def recipe(tmp_path: Path, command: str) -> str:
    path = tmp_path / "recipes" / "talker.yaml"
    path.parent.mkdir(exist_ok=True)
    lines = [
        "name: talker",
        "source: {repo: set-by-test, ref: main}",
        "install: ['sh install.sh']",
        "run:",
        f"  command: {json.dumps(command)}",
        "  ready: 'bot says out'",
        "  ready_timeout: 15",
    ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


class WrapCase(t.NamedTuple):
    test_id: str
    command: str
    quiet: bool  # bash's report of the kill stays out of the console


WRAP_CASES = [
    WrapCase("simple", f'{{python}} -c "{BOT}"', True),
    WrapCase("own-redirect", f'{{python}} -c "{BOT}" 2>&1', True),
    # Leading assignments stay before the wrapper's exec (``A=1 exec bot``), so the bot is still the recorded pid.
    WrapCase("assignments", f"GREETING='a b' LANG=C {{python}} -c \"{BOT}\"", True),
    # A compound command is grouped: its output is kept, but bash may report the kill on the terminal.
    WrapCase("compound", f'cd . && {{python}} -c "{BOT}"', False),
    # A builtin that runs the bot (exec could not run it) makes a group too.
    WrapCase("builtin", f'command {{python}} -c "{BOT}"', False),
    # An exec inside a compound command replaces the wrapper's subshell, not the wrapper: the exit code is kept.
    WrapCase("compound-exec", f'cd . && exec {{python}} -c "{BOT}"', False),
]


@pytest.mark.parametrize("case", WRAP_CASES, ids=[case.test_id for case in WRAP_CASES])
def test_a_killed_bot_leaves_its_own_output_and_exit_code_and_no_wrapper_lines_in_the_console(
    manager: Manager, backend: str, bot_origin: Path, tmp_path: Path, case: WrapCase
) -> None:
    manager.new("tk", recipe(tmp_path, case.command), repo=str(bot_origin), backend=backend)
    manager.start(["tk"])
    log = manager.paths.console_log("tk")
    wait_until(lambda: log.exists() and "bot says err" in log.read_text(errors="replace"), message="the bot's stderr")
    pid = manager.status(["tk"])[0].pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: manager.status(["tk"])[0].state == "crashed", timeout=10, message="the crash")
    assert manager.status(["tk"])[0].exit_code == 137

    text = log.read_text(errors="replace")
    assert "bot says out" in text and "bot says err" in text, text
    if case.quiet:
        assert "Killed" not in text and "run.sh" not in text and str(manager.paths.home) not in text, text
        wrapper = (manager.paths.instance_dir("tk") / WRAPPER_LOG).read_text()
        assert "Killed" in wrapper, wrapper  # bash's report is kept, out of the console


def test_the_prelude_output_and_the_wrappers_notice_still_reach_the_console(
    manager: Manager, bot_origin: Path, tmp_path: Path
) -> None:
    path = recipe(tmp_path, '{python} -c "print(1)"')
    with open(path, "a") as extra:  # noqa: PTH123 - appending one YAML line
        extra.write("  prelude: 'echo prelude says err >&2; false'\n")
    manager.new("tk", path, repo=str(bot_origin))
    with contextlib.suppress(InstanceError):  # the bot may be seen exiting during the start
        manager.start(["tk"], wait=False)
    log = manager.paths.console_log("tk")
    wait_until(lambda: manager.status(["tk"])[0].exit_code == 98, timeout=10, message="the prelude's exit code")
    wanted = ("prelude says err", "bot-supervisor: prelude failed")
    wait_until(lambda: all(w in log.read_text(errors="replace") for w in wanted), message="both lines")


# Exits 0 on SIGTERM (a graceful stop); its command line carries a mark the test looks for.
GRACEFUL_BOT = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); "
    "print('bot says out', flush=True); time.sleep(600)  # the-real-bot"
)


def slow_tools(tmp_path: Path) -> str:
    """Return a PATH whose ``date`` and ``mv`` each take a second: the wrapper's own helpers, made visible."""
    shims = tmp_path / "slow-bin"
    shims.mkdir()
    for tool in ("date", "mv"):
        real = shutil.which(tool)
        assert real is not None, tool
        (shims / tool).write_text(f'#!/bin/sh\n{shutil.which("sleep")} 1\nexec {real} "$@"\n')
        (shims / tool).chmod(0o755)
    return f"{shims}:{os.environ['PATH']}"


def pids_seen(manager: Manager, name: str, until: Callable[[], bool]) -> list[tuple[str, int | None]]:
    """Return every (state, pid) a tight status loop saw until ``until()`` (then one more look)."""
    seen = []
    while True:
        done = until()
        status = manager.status([name])[0]
        seen.append((status.state, status.pid))
        if done:
            return seen


def test_no_status_names_the_wrappers_helpers_as_the_bot_around_a_graceful_stop(
    manager: Manager, backend: str, bot_origin: Path, tmp_path: Path
) -> None:
    path = recipe(tmp_path, f'{{python}} -c "{GRACEFUL_BOT}"')
    with open(path, "a") as extra:  # noqa: PTH123 - appending YAML lines
        extra.write(f"  env: {{PATH: {json.dumps(slow_tools(tmp_path))}}}\n")
        extra.write("  stop: {signal: SIGTERM, grace: 10}\n")
    manager.new("tk", path, repo=str(bot_origin), backend=backend)
    manager.start(["tk"])
    bot = manager.status(["tk"])[0].pid
    assert bot is not None and "the-real-bot" in " ".join(psutil.Process(bot).cmdline())

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        stopping = pool.submit(manager.stop, ["tk"])
        seen = pids_seen(manager, "tk", stopping.done)
        result = stopping.result()[0]
    assert result.step == "stop-signal", result
    # Before the fix, the second the wrapper spent in date/mv after the bot left showed as 'running' with their pid.
    assert {pid for _, pid in seen} <= {bot, None}, seen
    assert seen[-1] == ("stopped", None), seen
    record = read_exit_record(manager.paths, "tk")
    assert record is not None and record.code == 0  # the exit code is still recorded


def test_no_status_names_a_prelude_command_as_the_bot(
    manager: Manager, backend: str, bot_origin: Path, tmp_path: Path
) -> None:
    path = recipe(tmp_path, f'{{python}} -c "{GRACEFUL_BOT}"')
    with open(path, "a") as extra:  # noqa: PTH123 - appending one YAML line
        extra.write(f"  prelude: '{shutil.which('sleep')} 1'\n")
    manager.new("tk", path, repo=str(bot_origin), backend=backend)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        starting = pool.submit(manager.start, ["tk"], wait=False)
        seen = pids_seen(manager, "tk", lambda: starting.done() and manager.status(["tk"])[0].state == "running")
        starting.result()
    bot = seen[-1][1]
    assert bot is not None and "the-real-bot" in " ".join(psutil.Process(bot).cmdline())
    # Before the fix, the prelude's sleep was reported as the bot while it ran (and 'start' took it for the bot).
    assert {pid for _, pid in seen} <= {bot, None}, seen
    assert ("starting", None) in seen, seen


def test_the_agent_never_publishes_a_wrapper_helper_as_the_bot_around_a_graceful_stop(
    manager: Manager,
    bot_origin: Path,
    tmp_path: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
) -> None:
    path = recipe(tmp_path, f'{{python}} -c "{GRACEFUL_BOT}"')
    with open(path, "a") as extra:  # noqa: PTH123 - appending YAML lines
        extra.write(f"  env: {{PATH: {json.dumps(slow_tools(tmp_path))}}}\n")
        extra.write("  stop: {signal: SIGTERM, grace: 10}\n")
    manager.new("tk", path, repo=str(bot_origin))
    manager.start(["tk"])
    bot = manager.status(["tk"])[0].pid
    states = watchers(mosquitto).watch(f"supervisor/{HOST}/tk/state")
    agents.start(mosquitto.url, check_interval=0.05)
    next_matching(states, lambda m: m.json()["state"] == "running" and m.json()["pid"] == bot, timeout=10)

    manager.stop(["tk"])  # what `supervisor stop tk` does, from another process than the agent's
    published: list[dict[str, t.Any]] = []
    while not published or published[-1]["state"] != "stopped":
        published.append(next_matching(states, timeout=10).json())
    # Before the fix the agent published 'running' with the pid of the wrapper's date (then mv) here.
    pairs = [(record["state"], record["pid"]) for record in published]
    assert set(pairs) <= {("running", bot), ("stopped", None)}, pairs

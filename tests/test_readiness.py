from __future__ import annotations

import json
import re
import threading
import typing as t
from pathlib import Path

import pytest
from click.testing import CliRunner

from supervisor.cli import cli
from supervisor.core import readiness
from supervisor.core.manager import Manager
from supervisor.errors import InstanceNotReady, ReadyTimeout
from supervisor.logfiles import read_chunk
from tests.conftest import RECIPES, wait_until

LOGIN = str(RECIPES / "login.yaml")
HEADLESS = str(RECIPES / "headless.yaml")
READY = re.compile(r"lifecycle-bot ready")
PROMPT = re.compile(r"Enter your password")


@pytest.fixture(params=["tmux", "screen"])
def backend(request: pytest.FixtureRequest) -> str:
    name = t.cast("str", request.param)
    request.getfixturevalue("tmux_socket" if name == "tmux" else "screendir")
    return name


def fresh(manager: Manager) -> Manager:
    """A Manager as a later 'supervisor ls' builds it: nothing carried over in memory."""
    return Manager(manager.paths)


def state_of(manager: Manager, name: str) -> str:
    return fresh(manager).status([name])[0].state


def test_login_dialog_then_ready(
    manager: Manager, backend: str, lifecycle_bot_origin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager.new("lg", LOGIN, repo=str(lifecycle_bot_origin), backend=backend)
    [result] = manager.start(["lg"])  # returns at the dialog instead of waiting out ready_timeout
    assert result.ok
    assert "waits at its login dialog: log in with 'supervisor attach lg'" in result.message
    status = fresh(manager).status(["lg"])[0]
    assert (status.state, status.is_running, status.is_ready) == ("waiting-login", True, False)
    assert status.pid is not None

    monkeypatch.setenv("SUPERVISOR_TMUX_SOCKET", manager.paths.tmux_socket)
    runner = CliRunner()
    shown = runner.invoke(cli, ["ls", "--no-foreign"])
    row = rf"^lg\s+login\s+{backend}\s+waiting-login\s+running\s+\d+"
    assert re.search(row, shown.stdout, re.MULTILINE), shown.stdout
    status_json = runner.invoke(cli, ["status", "lg", "--json"])
    assert status_json.exit_code == 0  # a process is alive
    assert json.loads(status_json.stdout)["state"] == "waiting-login"

    # A bot command is never typed into the dialog (it would be read as the password).
    with pytest.raises(
        InstanceNotReady, match=re.escape("waiting at its login dialog. Log in with 'supervisor attach lg'")
    ):
        manager.relay("lg", "start", {})
    manager.send("lg", "wrong")
    wait_until(lambda: "Invalid password" in manager.paths.console_log("lg").read_text(), message="refused login")
    assert state_of(manager, "lg") == "waiting-login"
    manager.send("lg", "secret-pw")
    wait_until(lambda: state_of(manager, "lg") == "running", message="running after login")
    # The ready line is now far back in the log: later looks still know it (no rescan from launch needed).
    with manager.paths.console_log("lg").open("a") as log:
        log.write("noise\n" * 20000)
    assert state_of(manager, "lg") == "running"
    again = manager.start(["lg"])[0]
    assert not again.changed
    assert "already running" in again.message


def test_starting_until_ready_and_start_joins_a_starting_bot(
    manager: Manager, lifecycle_bot_origin: Path, tmp_path: Path
) -> None:
    recipe = tmp_path / "headless.yaml"
    recipe.write_text((RECIPES / "headless.yaml").read_text().replace("ready_timeout: 15", "ready_timeout: 1"))
    flag = tmp_path / "go"
    manager.new(
        "slow",
        str(recipe),
        repo=str(lifecycle_bot_origin),
        settings=[f"ready_flag={flag}"],
        secret_values={"password": b"pw"},
    )
    manager.start(["slow"], wait=False)
    status = wait_until(lambda: fresh(manager).status(["slow"])[0].pid and fresh(manager).status(["slow"])[0])
    assert (status.state, status.is_running, status.is_ready) == ("starting", True, False)
    wait_until(lambda: "lifecycle-bot v1" in manager.paths.console_log("slow").read_text())
    assert state_of(manager, "slow") == "starting"  # alive, still no ready line
    # A start for a bot that is still starting waits for its ready line (here in vain), launching nothing.
    launched_at = manager.registry.get("slow").started_at
    with pytest.raises(
        ReadyTimeout, match=re.escape("did not print /lifecycle-bot ready/ within 1s. It is left running")
    ):
        fresh(manager).start(["slow"])
    assert fresh(manager).status(["slow"])[0].pid == status.pid
    assert manager.registry.get("slow").started_at == launched_at  # the record still tells the first launch
    flag.touch()
    wait_until(lambda: state_of(manager, "slow") == "running", message="running once the ready line is printed")
    assert fresh(manager).status(["slow"])[0].pid == status.pid


def test_observe_reads_only_new_output_and_keeps_a_prompt_without_newline(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    record = tmp_path / "readiness.json"
    log.write_bytes(b"old run: lifecycle-bot ready\n")
    readiness.reset(record, log.stat().st_size)

    def look() -> readiness.Seen | None:
        return readiness.observe(record, lambda offset: read_chunk(log, offset), READY, PROMPT)

    seen = look()
    assert seen is not None and not seen.ready and not seen.login  # the previous launch's line does not count
    with log.open("ab") as handle:
        handle.write(b"booting\nEnter your pass")
    seen = look()
    assert seen is not None and not seen.login
    with log.open("ab") as handle:
        handle.write(b"word: ")  # the prompt completes across two looks, without a newline
    seen = look()
    assert seen is not None and seen.login and not seen.ready
    with log.open("ab") as handle:
        handle.write(b"\nlifecycle-bo")
    assert look() == readiness.Seen(offset=log.stat().st_size, carry="lifecycle-bo", login=True, ready=False)
    with log.open("ab") as handle:
        handle.write(b"t ready\n")
    seen = look()
    assert seen is not None and seen.ready
    assert readiness.load(record) == seen
    assert readiness.observe(tmp_path / "none.json", lambda o: ("", o), READY, PROMPT) is None  # untracked launch


def test_concurrent_looks_never_lose_ready(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    record = tmp_path / "readiness.json"
    log.write_bytes(b"")
    readiness.reset(record, 0)
    stop = threading.Event()

    def writer() -> None:
        with log.open("ab") as handle:
            for i in range(3000):
                handle.write(f"line {i}\n".encode())
                if i == 1500:
                    handle.write(b"lifecycle-bot ready\n")
                handle.flush()
        stop.set()

    def looker() -> None:
        while not stop.is_set():
            readiness.observe(record, lambda offset: read_chunk(log, offset), READY, None)

    threads = [threading.Thread(target=writer), *(threading.Thread(target=looker) for _ in range(4))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    seen = readiness.observe(record, lambda offset: read_chunk(log, offset), READY, None)
    assert seen is not None and seen.ready


def test_ls_answered_by_the_agent_says_running_once_another_process_saw_the_ready_line(
    manager: Manager, lifecycle_bot_origin: Path, tmp_path: Path
) -> None:
    """The agent's snapshot is fresh for a second, but a bot between launch and ready is looked at again."""
    from supervisor.agent.host import Agent
    from supervisor.mqtt.config import load_agent_config

    recipe = tmp_path / "headless.yaml"
    recipe.write_text((RECIPES / "headless.yaml").read_text())
    flag = tmp_path / "go"
    manager.new(
        "slow",
        str(recipe),
        repo=str(lifecycle_bot_origin),
        settings=[f"ready_flag={flag}"],
        secret_values={"password": b"pw"},
    )
    manager.start(["slow"], wait=False)
    wait_until(lambda: "lifecycle-bot v1" in manager.paths.console_log("slow").read_text())
    config = load_agent_config(None, {}, {"url": "mqtt://127.0.0.1:1", "host_id": "h1"})
    agent = Agent(manager, config)  # never run: the provider alone, as the snapshot socket calls it
    try:
        assert agent.view.provide(["slow"], False)["instances"][0]["state"] == "starting"  # the snapshot is fresh now
        flag.touch()
        fresh(manager).start(["slow"])  # another process waits for the ready line and records it
        assert agent.view.provide(["slow"], False)["instances"][0]["state"] == "running"
        # Within the snapshot's second: what another process's look records is seen at once.
        manager.stop(["slow"])
        flag.unlink()  # this launch stays short of its ready line
        manager.start(["slow"], wait=False)
        assert agent.view.provide([], False)["instances"][0]["state"] == "starting"
        readiness.mark_ready(manager.paths.readiness_file("slow"))  # as that look writes it
        assert agent.view.provide([], False)["instances"][0]["state"] == "running"
    finally:
        agent.probe.close()

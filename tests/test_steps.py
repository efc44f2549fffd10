"""Tests for supervisor.core.steps: recipe install steps run with bash, logged and timed out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from supervisor.core import steps
from supervisor.errors import InstallError
from tests.conftest import wait_until

# -- run_install_steps / log_tail ------------------------------------------------------


def step_env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], **extra}


def test_run_install_steps_logs_every_step(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "install.log"
    lines: list[str] = []
    commands = ["echo hello from $GREETING", "pwd", "echo to-stderr >&2"]

    steps.run_install_steps(
        commands,
        cwd=tmp_path,
        env=step_env(GREETING="step-one"),
        log_path=log,
        on_line=lines.append,
    )

    assert lines == [
        "[1/3] echo hello from $GREETING",
        "[2/3] pwd",
        "[3/3] echo to-stderr >&2",
    ]
    text = log.read_text()
    assert "==> [1/3] echo hello from $GREETING" in text
    assert "==> [3/3] echo to-stderr >&2" in text
    assert "hello from step-one" in text
    assert f"\n{tmp_path}\n" in text
    assert "to-stderr" in text
    assert text.index("hello from step-one") < text.index("==> [2/3] pwd")


def test_run_install_steps_env_is_complete(tmp_path: Path) -> None:
    log = tmp_path / "install.log"
    steps.run_install_steps(
        ['echo "home=[${HOME:-unset}]"'],
        cwd=tmp_path,
        env=step_env(),
        log_path=log,
    )
    assert "home=[unset]" in log.read_text()


def test_run_install_steps_appends(tmp_path: Path) -> None:
    log = tmp_path / "install.log"
    log.write_text("earlier run\n")
    steps.run_install_steps(["echo again"], cwd=tmp_path, env=step_env(), log_path=log)
    text = log.read_text()
    assert text.startswith("earlier run\n")
    assert "again" in text


def test_run_install_steps_failure_names_step_code_and_tail(tmp_path: Path) -> None:
    log = tmp_path / "install.log"
    lines: list[str] = []
    commands = ["echo fine", "echo broken build; exit 3", "echo never"]

    with pytest.raises(InstallError) as info:
        steps.run_install_steps(
            commands, cwd=tmp_path, env=step_env(), log_path=log, on_line=lines.append, instance="mm-1"
        )

    error = info.value
    assert str(error) == (
        "install step 2/3 'echo broken build; exit 3' failed with exit code 3. "
        f"See the log at {log}; fix the cause and run 'supervisor install mm-1'."
    )
    assert error.step == "echo broken build; exit 3"
    assert "broken build" in error.log_tail
    assert error.code == "install_failed"
    assert lines == ["[1/3] echo fine", "[2/3] echo broken build; exit 3"]
    assert "never" not in log.read_text()


def test_run_install_steps_timeout_kills_the_process_group(tmp_path: Path) -> None:
    log = tmp_path / "install.log"
    pid_file = tmp_path / "child.pid"
    step = f"sleep 60 & echo $! > {pid_file}; wait"

    with pytest.raises(InstallError, match=r"timed out after 0\.5s") as info:
        steps.run_install_steps([step], cwd=tmp_path, env=step_env(), log_path=log, step_timeout=0.5)

    assert info.value.step == step
    child = int(pid_file.read_text())
    wait_until(lambda: not _alive(child), message=f"background child {child} to die")


def _alive(pid: int) -> bool:
    """Tell whether ``pid`` runs (a zombie waiting for its reaper counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_run_install_steps_missing_cwd(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="could not start"):
        steps.run_install_steps(
            ["true"],
            cwd=tmp_path / "missing",
            env=step_env(),
            log_path=tmp_path / "install.log",
        )


def test_log_tail(tmp_path: Path) -> None:
    path = tmp_path / "log"
    assert steps.log_tail(path) == ""
    path.write_text("".join(f"line {i}\n" for i in range(100)))
    assert steps.log_tail(path, 3) == "line 97\nline 98\nline 99"
    assert steps.log_tail(path).splitlines()[0] == "line 80"

"""The scripts that keep the repository working on a fresh or busy machine (check-tree, venv, python, burn)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parent.parent


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def check_tree(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "check-tree.sh"), str(repo)], capture_output=True, text=True, check=False
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    require_binary("git")
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q")
    git(path, "config", "user.email", "t@example.invalid")
    git(path, "config", "user.name", "t")
    (path / ".gitignore").write_text(".venv/\n__pycache__/\n")
    (path / "run.sh").write_text("#!/usr/bin/env bash\necho ok\n")
    (path / "tool").write_text("#!/bin/sh\necho ok\n")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "clean")
    return path


def test_this_repository_passes_its_own_guard() -> None:
    done = check_tree(ROOT)
    assert done.returncode == 0, done.stderr


def test_a_clean_tree_passes(repo: Path) -> None:
    done = check_tree(repo)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_tracked_ignored_files_fail_with_their_names(repo: Path) -> None:
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "activate").write_text("# venv\n")
    git(repo, "add", "-f", ".venv/bin/activate")
    git(repo, "commit", "-q", "-m", "oops")
    done = check_tree(repo)
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert "1 tracked file(s) are ignored by .gitignore" in line and ".venv/bin/activate" in line


def test_a_shebang_into_a_checkout_fails_with_its_name(repo: Path) -> None:
    script = repo / "scripts" / "mypy"
    script.parent.mkdir()
    script.write_text("#!/work/elsewhere/.venv/bin/python3\nprint('hi')\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "oops")
    done = check_tree(repo)
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert "scripts/mypy (/work/elsewhere/.venv/bin/python3)" in line
    assert "run.sh" not in line and "tool" not in line


def make_checkout(path: Path) -> Path:
    (path / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "venv.sh", path / "scripts" / "venv.sh")
    return path


def venv_check(checkout: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(checkout / "scripts" / "venv.sh"), "--check"], capture_output=True, text=True, check=False
    )


def test_venv_made_here_belongs_and_a_copied_one_does_not(tmp_path: Path) -> None:
    first = make_checkout(tmp_path / "first")
    subprocess.run([sys.executable, "-m", "venv", str(first / ".venv")], check=True)
    done = venv_check(first)
    assert done.returncode == 0, done.stdout

    # The same virtualenv copied into another checkout (as a commit or `cp -a` would bring it) is not trusted.
    second = make_checkout(tmp_path / "second")
    shutil.copytree(first / ".venv", second / ".venv", symlinks=True)
    done = venv_check(second)
    assert done.returncode == 1
    assert f"its scripts run {first / '.venv' / 'bin' / 'python'}" in done.stdout


def test_a_venv_without_a_working_interpreter_does_not_belong(tmp_path: Path) -> None:
    checkout = make_checkout(tmp_path / "c")
    (checkout / ".venv" / "bin").mkdir(parents=True)
    (checkout / ".venv" / "bin" / "python").symlink_to(tmp_path / "gone" / "python3")
    done = venv_check(checkout)
    assert done.returncode == 1 and "no interpreter" in done.stdout


def burner(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "burn.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def worker_pids(proc: subprocess.Popen[str]) -> list[int]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("burn: 2 worker(s) for "), line
    return [int(pid) for pid in line.split(": ")[-1].split()]


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_cpu_burner_stops_by_itself_and_on_sigterm() -> None:
    done = burner("--seconds", "0.3", "--workers", "2")
    try:
        pids = worker_pids(done)
        assert done.wait(timeout=60) == 0
        assert not any(is_running(pid) for pid in pids)
    finally:
        done.kill()
        done.communicate()

    stopped = burner("--seconds", "600", "--workers", "2")
    pids = []
    try:
        pids = worker_pids(stopped)
        assert all(is_running(pid) for pid in pids)
        stopped.terminate()
        assert stopped.wait(timeout=60) == 0
        assert not any(is_running(pid) for pid in pids)
    finally:
        stopped.kill()
        stopped.communicate()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_the_cpu_burner_refuses_an_unbounded_run() -> None:
    refused = burner("--seconds", "0")
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 2
    assert "--seconds must be more than 0 and at most 14400 (4 hours)" in err


def find_python(version: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "python.sh"), version], capture_output=True, text=True, env=env, check=False
    )


def test_find_python_names_an_interpreter_of_the_asked_version() -> None:
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = find_python(here)
    assert found.returncode == 0, found.stderr
    path = found.stdout.strip()
    ran = subprocess.run(
        [path, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True, check=True
    )
    assert ran.stdout.strip() == str(sys.version_info[:2])


def test_find_python_fails_clearly_without_the_version_or_pyenv(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    missing = find_python("3.98", env)
    assert missing.returncode == 1
    assert missing.stderr.splitlines() == [
        (
            "error: no Python 3.98 on this machine and no pyenv to install it. Install python3.98 "
            "(apt-get install python3.98 python3.98-venv, or pyenv) and run again."
        )
    ]
    bad = find_python("three", env)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: python version 'three': expected MAJOR.MINOR, such as 3.12"

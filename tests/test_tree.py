"""The guards that keep the repository working on a fresh machine (scripts/check-tree.sh, scripts/venv.sh)."""

from __future__ import annotations

import shutil
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

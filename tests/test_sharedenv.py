from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.core import sharedenv
from supervisor.errors import InstallError
from tests.conftest import make_origin

HERE = f"{sys.version_info.major}.{sys.version_info.minor}"


def test_find_python_by_path_checks_the_version() -> None:
    python, version = sharedenv.find_python(sys.executable, want=HERE)
    assert python == Path(sys.executable)
    assert version == platform.python_version()
    with pytest.raises(InstallError, match=r"no Python 2\.7 found; tried .*\(is 3\.") as caught:
        sharedenv.find_python(sys.executable, want="2.7")
    assert "pyenv install 2.7" in str(caught.value)
    assert "--set python27=" in str(caught.value)


def test_find_python_missing_name_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no python, no pyenv
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    with pytest.raises(InstallError, match=r"python 'python3\.12': no Python 3\.12 found on PATH or in pyenv"):
        sharedenv.find_python("python3.12", want="3.12")


def test_find_python_looks_in_pyenv_versions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Not on PATH, but pyenv's versions folder has it: found there."""
    fake = tmp_path / "pyenv" / "versions" / f"{platform.python_version()}" / "bin"
    fake.mkdir(parents=True)
    (fake / "pyfound").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    python, version = sharedenv.find_python("pyfound", want=HERE)
    assert python == fake / "pyfound"
    assert version == platform.python_version()


def test_read_setup_requirements_without_running_it(tmp_path: Path) -> None:
    keyword = tmp_path / "a.py"
    keyword.write_text("raise SystemExit('never run')\nsetup(name='x', install_requires=['aiohttp>=3', ' numpy '])\n")
    assert sharedenv.read_setup_requirements(keyword) == ["aiohttp>=3", "numpy"]
    assigned = tmp_path / "b.py"
    assigned.write_text("def main():\n    install_requires = [\n        'a==1',\n        'b<2,>=1',\n    ]\n")
    assert sharedenv.read_setup_requirements(assigned) == ["a==1", "b<2,>=1"]
    computed = tmp_path / "c.py"
    computed.write_text("install_requires = open('r.txt').read().split()\n")
    with pytest.raises(InstallError, match=r"no literal install_requires list found\. Give .* --requirements FILE"):
        sharedenv.read_setup_requirements(computed)


def test_env_key_depends_on_python_and_the_set_of_requirements() -> None:
    key = sharedenv.env_key("3.12.1", ["b>=1", "a"])
    assert key == sharedenv.env_key("3.12.1", ["A", "b >= 1"])
    assert key != sharedenv.env_key("3.12.2", ["a", "b>=1"])
    assert key != sharedenv.env_key("3.12.1", ["a", "b>=2"])


def test_ensure_env_builds_once_then_reuses_and_never_touches_it(tmp_path: Path) -> None:
    """A complete env is reused as is; a leftover without the mark is rebuilt."""
    said: list[str] = []
    root = tmp_path / "envs"
    key = sharedenv.env_key(platform.python_version(), [])
    env = root / f"t-py{HERE}-{key}"
    env.mkdir(parents=True)
    (env / "half-built").write_text("")
    # pip cannot reach an index here, so only the upgrade step may fail: the env must not stay behind.
    with pytest.raises(InstallError, match="upgrading pip failed"):
        _build_offline(root, said)
    assert any("removing the unfinished" in line for line in said)
    assert not env.exists()
    # A complete env (mark present) is returned without running anything.
    env.mkdir()
    (env / sharedenv.COMPLETE).write_text("{}")
    (env / "sentinel").write_text("kept")
    assert sharedenv.ensure_env(root, "t", Path("/nonexistent/python"), platform.python_version(), []) == env
    assert (env / "sentinel").read_text() == "kept"


def _build_offline(root: Path, said: list[str]) -> Path:
    """Run ensure_env with pip allowed no index at all."""
    saved = {k: os.environ.get(k) for k in ("PIP_INDEX_URL", "PIP_NO_INDEX", "PIP_FIND_LINKS", "PIP_CONFIG_FILE")}
    os.environ.update(PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS="")
    try:
        return sharedenv.ensure_env(root, "t", Path(sys.executable), platform.python_version(), [], say=said.append)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_link_env_keeps_the_git_tree_clean(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    make_origin(origin, {"setup.py": "install_requires = []\n"})
    env = tmp_path / "env"
    env.mkdir()
    sharedenv.link_env(origin, ".venv", env)
    sharedenv.link_env(origin, ".venv", env)  # again: replaced, listed once
    assert (origin / ".venv").resolve() == env
    out = subprocess.run(["git", "status", "--porcelain"], cwd=origin, capture_output=True, text=True, check=True)
    assert out.stdout == ""
    assert (origin / ".git" / "info" / "exclude").read_text().count("/.venv\n") == 1


def test_command_line_error_is_one_line_and_exit_1(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "supervisor.core.sharedenv", "--python", sys.executable, "--require", "2.7"),
            *("--root", str(tmp_path), "--setup-py", "setup.py"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("Error: python '")

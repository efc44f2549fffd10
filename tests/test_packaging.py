"""What a user gets from ``pip install .`` and ``pipx install .``: a fresh environment, no checkout on the path.

The wheels of the project's dependencies (and of pip, pipx and hatchling) are fetched from PyPI once per
session into a temporary wheelhouse; every install then runs with ``--no-index`` against it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tomllib
import typing as t
from pathlib import Path

import pytest

import supervisor
from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "supervisor" / "fleet" / "dashboard" / "static"


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command to completion and return its stdout; its output is shown when it fails."""
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, (
        f"{args} exited {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )
    return proc.stdout


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels of every dependency of the project, pip, pipx and hatchling, for this interpreter."""
    house = tmp_path_factory.mktemp("wheelhouse")
    run(sys.executable, "-m", "pip", "wheel", "-q", "-w", house, ROOT, "pip", "pipx", "hatchling", cwd=house)
    return house


def user_env(tmp_path: Path, tmux_socket: str) -> dict[str, str]:
    """The environment of a user of the installed command: no checkout on ``PYTHONPATH``, a home of their own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPERVISOR_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(SUPERVISOR_HOME=str(tmp_path / "home"), SUPERVISOR_TMUX_SOCKET=tmux_socket)
    return env


def check_installed(bin_dir: Path, python: Path, tmp_path: Path, tmux_socket: str) -> None:
    """Assert that an installed ``supervisor`` works from its own files: recipes, example bot, dashboard, license."""
    env = user_env(tmp_path, tmux_socket)
    cli = bin_dir / "supervisor"
    where = run(python, "-c", "import supervisor; print(supervisor.__file__)", cwd=tmp_path, env=env)
    assert not Path(where.strip()).is_relative_to(ROOT), where
    assert run(cli, "--version", cwd=tmp_path, env=env).strip() == f"supervisor, version {supervisor.__version__}"

    recipes = {r["name"]: r for r in json.loads(run(cli, "recipes", "--json", cwd=tmp_path, env=env))}
    assert {"example-bot", "hummingbot", "hummingbot-venv"} <= set(recipes)
    assert all(r["builtin"] for r in recipes.values())

    # The dashboard's files come out of the installed package, the same bytes as in the checkout.
    script = (
        "import sys\n"
        "from importlib import resources\n"
        "static = resources.files('supervisor.fleet.dashboard').joinpath('static')\n"
        "sys.stdout.write('\\n'.join(f'{p.name} {len(p.read_bytes())}' for p in sorted(static.iterdir(), key=str)))\n"
    )
    shipped = dict(line.split() for line in run(python, "-c", script, cwd=tmp_path, env=env).splitlines())
    assert shipped == {p.name: str(p.stat().st_size) for p in STATIC.iterdir()}

    meta = (
        "import json, importlib.metadata as m\n"
        "d = m.distribution('bot-supervisor')\n"
        "print(json.dumps([d.metadata['License-Expression'], d.read_text('licenses/LICENSE')]))\n"
    )
    expression, license_text = json.loads(run(python, "-c", meta, cwd=tmp_path, env=env))
    assert expression == "MIT"
    assert license_text == (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License\n")

    # The built-in example bot installs from the recipe folder shipped in the wheel and runs.
    try:
        run(cli, "new", "pkg-1", "-r", "example-bot", cwd=tmp_path, env=env)
        started = run(cli, "start", "pkg-1", "--wait", cwd=tmp_path, env=env)
        assert started.startswith("started 'pkg-1' in tmux session 'sup-pkg-1'"), started
        (record,) = json.loads(run(cli, "ls", "--json", "--no-foreign", cwd=tmp_path, env=env))["instances"]
        assert (record["name"], record["recipe"], record["state"]) == ("pkg-1", "example-bot", "running")
    finally:
        with contextlib.suppress(Exception):
            subprocess.run([cli, "stop", "--all", "--timeout", "5"], env=env, timeout=60, check=False)


def test_pip_install_into_a_fresh_venv(wheelhouse: Path, tmp_path: Path, tmux_socket: str) -> None:
    require_binary("tmux")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    run(
        venv / "bin" / "python",
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--find-links",
        wheelhouse,
        ROOT,
        cwd=tmp_path,
    )
    check_installed(venv / "bin", venv / "bin" / "python", tmp_path, tmux_socket)


def test_pipx_install(wheelhouse: Path, tmp_path: Path, tmux_socket: str) -> None:
    require_binary("tmux")
    tools = tmp_path / "tools"
    run(sys.executable, "-m", "venv", tools, cwd=tmp_path)
    run(
        tools / "bin" / "python",
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--find-links",
        wheelhouse,
        "pipx",
        cwd=tmp_path,
    )
    env = {
        **os.environ,
        "PIPX_HOME": str(tmp_path / "pipx"),
        "PIPX_BIN_DIR": str(tmp_path / "bin"),
        "PIPX_MAN_DIR": str(tmp_path / "man"),
    }
    pip_args = f"--no-index --find-links {wheelhouse}"
    run(
        tools / "bin" / "pipx",
        "install",
        "--python",
        sys.executable,
        f"--pip-args={pip_args}",
        ROOT,
        cwd=tmp_path,
        env=env,
    )
    python = tmp_path / "pipx" / "venvs" / "bot-supervisor" / "bin" / "python"
    check_installed(tmp_path / "bin", python, tmp_path, tmux_socket)


def test_the_tree_names_its_license() -> None:
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
    project = t.cast("dict[str, t.Any]", tomllib.loads((ROOT / "pyproject.toml").read_text())["project"])
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    assert project["authors"]
    assert any(c.startswith("Programming Language :: Python :: 3.12") for c in project["classifiers"])

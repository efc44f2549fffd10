from __future__ import annotations

import contextlib
import json
import os
import signal
import typing as t
from pathlib import Path

import git
import pytest

from supervisor.core import buildcache, sharedenv
from supervisor.core.manager import Manager
from supervisor.paths import Paths
from tests.conftest import commit_files, invoke, make_origin
from tests.test_buildcache import FILES, RECIPE, git_status

if t.TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def home(isolated_env: Path, tmux_socket: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("SUPERVISOR_TMUX_SOCKET", tmux_socket)
    yield isolated_env
    with contextlib.suppress(Exception):
        for status in Manager(Paths.from_env(isolated_env, tmux_socket)).status():
            if status.pid:
                os.kill(status.pid, signal.SIGKILL)


def make_venv(root: Path, name: str, *, complete: bool = True) -> Path:
    """A folder as sharedenv leaves one (gc reads only its completion mark)."""
    env = root / name
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").write_bytes(b"x" * 5000)
    if complete:
        (env / sharedenv.COMPLETE).write_text("{}\n")
    return env


def gc_items() -> set[tuple[str, str]]:
    data = json.loads(invoke("gc", "--json").stdout)
    return {(item["kind"], item["path"]) for item in data["items"]}


def test_gc_lists_then_removes_only_what_no_instance_uses(home: Path, tmp_path: Path) -> None:
    origin, other = tmp_path / "origin", tmp_path / "other"
    make_origin(origin, FILES).close()
    make_origin(other, FILES).close()
    recipe = tmp_path / "built-bot.yaml"
    recipe.write_text(RECIPE)
    paths = Paths.from_env(home)
    invoke("new", "b1", "-r", str(recipe), "--repo", str(origin))
    checkout = paths.default_checkout("b1")
    first_build = Path((checkout / ".git" / buildcache.USAGE_FILE).read_text().strip())
    venvs = home / "venvs"
    used_env = make_venv(venvs, "bot-py3.12-used")
    sharedenv.link_env(checkout, ".venv", used_env)
    old_env = make_venv(venvs, "bot-py3.12-old")
    broken_env = make_venv(venvs, "bot-py3.12-broken", complete=False)
    with git.Repo(origin) as repo:
        commit_files(repo, {"pkg/a.src": "A2\n"}, "new sources")
    invoke("update", "b1")  # its first build is now used by nobody
    invoke("new", "b2", "-r", str(recipe), "--repo", str(other))
    invoke("rm", "b2", "--purge", "--yes")  # and the mirror of 'other' neither
    other_mirror = next(p for p in paths.mirrors.iterdir() if p.name.startswith("other-") and p.is_dir())

    expected = {
        ("build", str(first_build)),
        ("venv", str(old_env)),
        ("venv", str(broken_env)),
        ("mirror", str(other_mirror)),
    }
    assert gc_items() == expected
    listed = invoke("gc").stdout
    assert "venv (unfinished)" in listed and "Delete them with: supervisor gc --yes" in listed
    assert all(Path(path).exists() for _, path in expected)  # a dry run by default

    removed = json.loads(invoke("gc", "--yes", "--json").stdout)
    assert removed["removed"] is True and removed["freed"] > 0
    assert not any(Path(path).exists() for _, path in expected)
    assert gc_items() == set()
    assert "Nothing to remove" in invoke("gc").stdout
    # What b1 uses is all there: its build, venv and mirror.
    assert used_env.is_dir() and (checkout / ".venv").resolve() == used_env
    assert (checkout / "pkg" / "a.so").read_text() == "A2\n"
    assert git_status(checkout) == ""
    invoke("start", "b1", "--wait")


def test_ls_and_status_show_the_disk_an_instance_holds(home: Path, tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    make_origin(origin, {**FILES, "big.bin": "x" * 200_000}).close()
    recipe = tmp_path / "built-bot.yaml"
    recipe.write_text(RECIPE)
    for name in ("d1", "d2"):
        invoke("new", name, "-r", str(recipe), "--repo", str(origin))
    [record, _] = json.loads(invoke("ls", "--json", "--disk", "--no-foreign").stdout)["instances"]
    assert record["disk"]["own"] > 200_000  # the checkout's files
    assert record["disk"]["shared"] > 0  # the build's outputs, hard links shared with d2 and the cache
    assert "disk" not in json.loads(invoke("ls", "--json", "--no-foreign").stdout)["instances"][0]
    table = invoke("ls", "--disk", "--no-foreign").stdout.splitlines()
    assert table[0].split()[-1] == "DISK"
    status = invoke("status", "d1", "--disk", code=3).stdout
    assert "shared with other checkouts" in status
    assert json.loads(invoke("status", "d1", "--disk", "--json", code=3).stdout)["disk"] == record["disk"]

from __future__ import annotations

import subprocess
import typing as t
from pathlib import Path

import git
import pytest

from supervisor.core import buildcache
from supervisor.core.manager import Manager
from supervisor.errors import InstallError
from tests.conftest import commit_files, make_origin

# The "build" turns each pkg/*.src into pkg/*.so (a stand-in for Cython: what matters here is
# which files it reads and makes, and how often it runs).
BUILD_SH = 'for f in pkg/*.src; do cat "$f" > "${f%.src}.so"; done; mkdir -p build && echo tmp > build/x.so\n'
FILES = {
    "bot.py": "import time\nprint('built-bot ready', flush=True)\ntime.sleep(600)\n",
    "build.sh": BUILD_SH,
    "pkg/a.src": "A1\n",
    "pkg/b.src": "B1\n",
    "README": "one\n",
    ".gitignore": "*.so\nbuild/\n",
}
RECIPE = """\
name: built-bot
source: {repo: set-by-test, ref: main}
vars:
  builds: '{home}/builds'
install:
  - >-
    {python} -m supervisor.core.buildcache --root {builds} --prefix t --input '*.src' --input build.sh
    --output 'pkg/*.so' -- sh build.sh
  - 'test -z "$(git status --porcelain)" && echo "git tree clean"'
run:
  command: '{python} bot.py'
  ready: 'built-bot ready'
  ready_timeout: 15
  stop: {signal: SIGINT, grace: 10}
"""


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    path = tmp_path / "origin"
    make_origin(path, FILES)
    return path


@pytest.fixture
def recipe(tmp_path: Path) -> str:
    path = tmp_path / "built-bot.yaml"
    path.write_text(RECIPE)
    return str(path)


def built(manager: Manager, name: str) -> int:
    """How many times the build command ran for ``name`` (its install log says so)."""
    return manager.paths.install_log(name).read_text().count("no build for this key yet")


def checkout(manager: Manager, name: str) -> Path:
    return Path(manager.registry.get(name).checkout)


def git_status(path: Path) -> str:
    done = subprocess.run(["git", "status", "--porcelain"], cwd=path, capture_output=True, text=True, check=True)
    return done.stdout


def test_the_nth_checkout_of_the_same_sources_gets_the_build_as_hard_links(
    manager: Manager, origin: Path, recipe: str
) -> None:
    repo = git.Repo(origin)
    repo.git.branch("other")  # another name for the same sources
    for name in ("b1", "b2"):
        manager.new(name, recipe, repo=str(origin))
    manager.new("b3", recipe, repo=str(origin), ref="other")
    assert [built(manager, n) for n in ("b1", "b2", "b3")] == [1, 0, 0]
    first = checkout(manager, "b1") / "pkg" / "a.so"
    for name in ("b2", "b3"):
        so = checkout(manager, name) / "pkg" / "a.so"
        assert so.read_text() == "A1\n"
        assert so.stat().st_ino == first.stat().st_ino  # one file on disk for all
        assert "restored 2 files" in manager.paths.install_log(name).read_text()
        assert not (checkout(manager, name) / "build").exists()  # only the named outputs travel
    for name in ("b1", "b2", "b3"):
        assert git_status(checkout(manager, name)) == ""  # a real checkout, clean
        assert (checkout(manager, name) / ".git" / "HEAD").is_file()
    # A change of a file the build does not read keeps the key.
    commit_files(repo, {"README": "two\n"}, "docs only")
    repo.close()
    manager.update("b1")
    assert built(manager, "b1") == 1


def test_an_update_of_many_bots_builds_once_and_never_writes_a_file_a_bot_has_open(
    manager: Manager, origin: Path, recipe: str
) -> None:
    names = ["u1", "u2", "u3"]
    for name in names:
        manager.new(name, recipe, repo=str(origin))
    manager.start(["u2"])
    # As a running bot holds its extension modules: an open file.
    held = (checkout(manager, "u2") / "pkg" / "a.so").open()
    commit_files(git.Repo(origin), {"pkg/a.src": "A2\n", "pkg/c.src": "C2\n"}, "new sources")
    for name in names:
        manager.update(name)
    assert sum(built(manager, n) for n in names) == 2  # the first new, then one build for the new sources
    for name in names:
        assert (checkout(manager, name) / "pkg" / "a.so").read_text() == "A2\n"
        assert (checkout(manager, name) / "pkg" / "c.so").read_text() == "C2\n"
        assert git_status(checkout(manager, name)) == ""
    assert held.read() == "A1\n"  # the old file was replaced by a rename, never written to
    held.close()
    assert manager.status(["u2"])[0].state == "running"
    # Back to the old sources: the old build is still stored, so nothing is built.
    old = git.Repo(origin).git.rev_parse("HEAD~1")
    manager.update("u3", ref=old)
    assert built(manager, "u3") == 0
    assert (checkout(manager, "u3") / "pkg" / "a.so").read_text() == "A1\n"
    assert not (checkout(manager, "u3") / "pkg" / "c.so").exists()  # the other build's module is gone


def test_a_failed_build_stores_nothing_and_the_next_one_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    make_origin(work, {**FILES, "build.sh": "exit 3\n"}).close()
    root = tmp_path / "builds"
    argv = ["--root", str(root), "--input", "*.src", "--output", "pkg/*.so", "sh", "build.sh"]
    monkeypatch.chdir(work)
    assert buildcache.main(argv) == 1
    assert not [p for p in root.iterdir() if (p / buildcache.COMPLETE).exists()]
    (work / "build.sh").write_text(BUILD_SH)  # uncommitted: the work tree's content is keyed
    assert buildcache.main(argv) == 0
    assert (work / "pkg" / "b.so").read_text() == "B1\n"
    with pytest.raises(InstallError, match="made no file matching nothing/"):
        buildcache.ensure_build(
            work, root, "t", ["true"], inputs=["*.src"], outputs=["nothing/*"], python="python3", say=lambda _: None
        )


def test_the_key_follows_content_python_and_command_never_the_branch(tmp_path: Path) -> None:
    work = tmp_path / "work"
    repo = make_origin(work, FILES)
    info: dict[str, t.Any] = {"python": "3.12.1", "platform": "linux-x86_64"}
    key, count = buildcache.build_key(work, ["*.src"], info, ["sh", "build.sh"])
    assert count == 2
    repo.git.checkout("-b", "feature")
    repo.close()
    assert buildcache.build_key(work, ["*.src"], info, ["sh", "build.sh"])[0] == key
    assert buildcache.build_key(work, ["*.src"], {**info, "python": "3.13.0"}, ["sh", "build.sh"])[0] != key
    assert buildcache.build_key(work, ["*.src"], info, ["sh", "other.sh"])[0] != key
    (work / "pkg" / "a.src").write_text("changed\n")
    assert buildcache.build_key(work, ["*.src"], info, ["sh", "build.sh"])[0] != key

"""Tests for supervisor.core.git against real git origins in tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
import typing as t
from collections.abc import Iterator
from pathlib import Path

import git
import pytest

from supervisor.core import git as core_git
from supervisor.errors import InstallError
from tests.conftest import commit_files, make_origin, require_binary

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[git.Repo]:
    """An origin with a branch ``main`` (two commits), a branch ``dev`` and tags."""
    repo = make_origin(tmp_path / "origin", {"bot.py": "print('v1')\n"}, "first")
    repo.create_tag("v1")
    repo.create_tag("v1-annotated", message="release 1")
    commit_files(repo, {"bot.py": "print('v2')\n"}, "second")
    repo.create_head("dev")
    repo.heads.dev.checkout()
    commit_files(repo, {"dev.txt": "dev\n"}, "on dev")
    repo.heads.main.checkout()
    yield repo
    repo.close()  # GitPython's cat-file helpers would otherwise outlive the test


@pytest.fixture
def mirrors(tmp_path: Path) -> Path:
    return tmp_path / "mirrors"


def origin_url(repo: git.Repo) -> str:
    return str(repo.working_tree_dir)


def head_sha(repo: git.Repo, rev: str) -> str:
    return repo.commit(rev).hexsha


def own_object_bytes(checkout: Path) -> int:
    """Bytes stored in the checkout's own object folder (``info/`` excluded)."""
    objects = checkout / ".git" / "objects"
    return sum(f.stat().st_size for f in objects.rglob("*") if f.is_file() and f.parent.name != "info")


# -- mirror_path / ensure_mirror ------------------------------------------------------


def test_mirror_path_is_readable_and_stable(tmp_path: Path) -> None:
    mirrors = tmp_path / "m"
    local = tmp_path / "bots" / "hummingbot"
    first = core_git.mirror_path(mirrors, str(local))
    assert first.parent == mirrors
    assert first.name.startswith("hummingbot-")
    assert first.name.endswith(".git")
    assert core_git.mirror_path(mirrors, f"file://{local}") == first
    assert core_git.mirror_path(mirrors, f"{local}/") == first
    remote = "https://github.com/hummingbot/hummingbot"
    assert core_git.mirror_path(mirrors, remote) == core_git.mirror_path(mirrors, remote + ".git")
    assert core_git.mirror_path(mirrors, remote).name.startswith("hummingbot-")
    other = core_git.mirror_path(mirrors, "https://github.com/fork/hummingbot.git")
    assert other != core_git.mirror_path(mirrors, remote)
    scp = core_git.mirror_path(mirrors, "git@github.com:hummingbot/gateway.git")
    assert scp.name.startswith("gateway-")


def test_ensure_mirror_creates_once_then_only_fetches(origin: git.Repo, mirrors: Path) -> None:
    mirror = core_git.ensure_mirror(mirrors, origin_url(origin))
    assert mirror == core_git.mirror_path(mirrors, origin_url(origin))
    with git.Repo(mirror) as bare, bare.config_reader() as config:
        assert bare.bare
        assert bare.commit("main").hexsha == head_sha(origin, "main")
        assert bare.commit("dev").hexsha == head_sha(origin, "dev")
        assert config.get_value("gc", "pruneExpire") == "never"
        assert config.get_value("gc", "auto") == 0
    marker = mirror / "created-by-test"
    marker.write_text("x")
    objects_inode = (mirror / "objects").stat().st_ino

    new = commit_files(origin, {"bot.py": "print('v3')\n"}, "third")
    again = core_git.ensure_mirror(mirrors, f"file://{origin_url(origin)}")

    assert again == mirror
    assert marker.exists(), "the mirror was cloned again instead of fetched"
    assert (mirror / "objects").stat().st_ino == objects_inode
    with git.Repo(mirror) as bare:
        assert bare.commit("main").hexsha == new
    assert [p.name for p in mirrors.iterdir() if p.suffix == ".git"] == [mirror.name]


def test_ensure_mirror_bad_url_leaves_nothing(tmp_path: Path, mirrors: Path) -> None:
    missing = tmp_path / "no-such-repo"
    with pytest.raises(InstallError) as info:
        core_git.ensure_mirror(mirrors, str(missing))
    assert f"repository '{missing}'" in str(info.value)
    assert "could not clone" in str(info.value)
    assert info.value.step == "clone"
    assert "does not exist" in info.value.log_tail
    assert not [p for p in mirrors.iterdir() if not p.name.endswith(".lock")]


def test_a_missing_git_program_is_named(
    origin: git.Repo, mirrors: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = origin_url(origin)
    core_git.ensure_mirror(mirrors, url)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    for call in (
        lambda: core_git.ensure_mirror(mirrors, url),
        lambda: core_git.checkout_latest(mirrors, url, tmp_path / "checkout", "main"),
    ):
        with pytest.raises(InstallError, match=r"\(the 'git' program is not installed\)"):
            call()
    assert not (tmp_path / "checkout").exists()


def test_ensure_mirror_refuses_a_folder_that_is_not_a_repository(origin: git.Repo, mirrors: Path) -> None:
    mirror = core_git.mirror_path(mirrors, origin_url(origin))
    mirror.mkdir(parents=True)
    (mirror / "junk").write_text("junk")
    with pytest.raises(InstallError, match="not a git repository"):
        core_git.ensure_mirror(mirrors, origin_url(origin))
    assert (mirror / "junk").exists()


def test_progress_is_reported_while_cloning(tmp_path: Path, mirrors: Path) -> None:
    files = {f"data/file{i:03}.txt": f"line {i}\n" * (i % 7 + 1) for i in range(300)}
    repo = make_origin(tmp_path / "big", files)
    calls: list[tuple[str, int | None, int | None]] = []

    def progress(stage: str, current: int | None, total: int | None) -> None:
        calls.append((stage, current, total))

    # file:// makes git use its transport (a plain path hardlinks and reports nothing).
    url = f"file://{repo.working_tree_dir}"
    mirror = core_git.ensure_mirror(mirrors, url, progress=progress)
    assert calls
    stages = {stage for stage, _, _ in calls}
    assert stages & {"counting objects", "receiving objects", "enumerating objects"}
    assert all(isinstance(c, int) or c is None for _, c, _ in calls)
    assert any(total is not None and total > 300 for _, _, total in calls)

    commit = core_git.clone_checkout(mirror, url, tmp_path / "c", "main", progress=progress)
    assert commit == repo.head.commit.hexsha
    assert len(list((tmp_path / "c" / "data").iterdir())) == 300


# -- clone_checkout --------------------------------------------------------------------


def test_clone_checkout_borrows_objects_from_the_mirror(origin: git.Repo, mirrors: Path, tmp_path: Path) -> None:
    url = origin_url(origin)
    mirror = core_git.ensure_mirror(mirrors, url)
    dest = tmp_path / "instances" / "a" / "checkout"

    commit = core_git.clone_checkout(mirror, url, dest, "main")

    assert commit == head_sha(origin, "main")
    alternates = (dest / ".git" / "objects" / "info" / "alternates").read_text()
    assert Path(alternates.strip()) == mirror / "objects"
    assert own_object_bytes(dest) == 0
    with git.Repo(dest) as cloned, cloned.config_reader() as config:
        assert cloned.remote("origin").url == url
        fetch = config.get_value('remote "origin"', "fetch")
    assert fetch == "+refs/heads/*:refs/remotes/origin/*"
    assert (dest / "bot.py").read_text() == "print('v2')\n"


@pytest.mark.parametrize("folder", ["plain", "with space", "semi;colon #hash", 'quote"back\\slash'])
def test_origin_url_survives_any_folder_name(folder: str, tmp_path: Path) -> None:
    repo = make_origin(tmp_path / folder / "origin", {"bot.py": "print('v1')\n"})
    url = str(repo.working_tree_dir)
    repo.close()
    mirrors = tmp_path / folder / "mirrors"

    core_git.checkout_latest(mirrors, url, tmp_path / "a", "main")
    core_git.checkout_latest(mirrors, url, tmp_path / "b", "main")  # the mirror exists: fetch and clone at once

    for name in ("a", "b"):
        got = subprocess.run(
            ["git", "-C", str(tmp_path / name), "config", "--get-all", "remote.origin.url"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert got.stdout == f"{url}\n"


class RefCase(t.NamedTuple):
    test_id: str
    ref: t.Callable[[git.Repo], str]
    commit: t.Callable[[git.Repo], str]
    branch: str | None


REF_CASES = [
    RefCase("branch-main", lambda r: "main", lambda r: head_sha(r, "main"), "main"),
    RefCase("branch-dev", lambda r: "dev", lambda r: head_sha(r, "dev"), "dev"),
    RefCase("tag", lambda r: "v1", lambda r: head_sha(r, "v1"), None),
    RefCase(
        "annotated-tag",
        lambda r: "v1-annotated",
        lambda r: head_sha(r, "v1-annotated"),
        None,
    ),
    RefCase("full-sha", lambda r: head_sha(r, "v1"), lambda r: head_sha(r, "v1"), None),
    RefCase(
        "short-sha",
        lambda r: head_sha(r, "dev")[:10],
        lambda r: head_sha(r, "dev"),
        None,
    ),
    RefCase("default-branch", lambda r: "", lambda r: head_sha(r, "main"), "main"),
]


@pytest.mark.parametrize("case", REF_CASES, ids=[c.test_id for c in REF_CASES])
def test_clone_checkout_refs(case: RefCase, origin: git.Repo, mirrors: Path, tmp_path: Path) -> None:
    url = origin_url(origin)
    mirror = core_git.ensure_mirror(mirrors, url)
    dest = tmp_path / "checkout"

    commit = core_git.clone_checkout(mirror, url, dest, case.ref(origin))

    assert core_git.current_commit(dest) == commit
    assert core_git.describe_ref(dest) == case.branch
    with git.Repo(dest) as cloned:
        assert commit == case.commit(origin) == cloned.head.commit.hexsha
        if case.branch is None:
            assert cloned.head.is_detached
        else:
            tracking = cloned.active_branch.tracking_branch()
            assert tracking is not None
            assert tracking.name == f"origin/{case.branch}"
        assert not cloned.is_dirty(untracked_files=True)


@pytest.mark.parametrize("pre_existing", [False, True], ids=["new-dest", "empty-dest"])
def test_clone_checkout_bad_ref_leaves_nothing(
    pre_existing: bool, origin: git.Repo, mirrors: Path, tmp_path: Path
) -> None:
    url = origin_url(origin)
    mirror = core_git.ensure_mirror(mirrors, url)
    dest = tmp_path / "checkout"
    if pre_existing:
        dest.mkdir()

    with pytest.raises(InstallError) as info:
        core_git.clone_checkout(mirror, url, dest, "no-such-branch")

    assert "ref 'no-such-branch' not found" in str(info.value)
    assert str(info.value).startswith(f"repository '{url}': ")
    if pre_existing:
        assert dest.is_dir()
        assert list(dest.iterdir()) == []
    else:
        assert not dest.exists()


def test_clone_checkout_refuses_a_non_empty_dest(origin: git.Repo, mirrors: Path, tmp_path: Path) -> None:
    url = origin_url(origin)
    mirror = core_git.ensure_mirror(mirrors, url)
    dest = tmp_path / "checkout"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")

    with pytest.raises(InstallError, match="exists and is not empty"):
        core_git.clone_checkout(mirror, url, dest, "main")

    assert [p.name for p in dest.iterdir()] == ["keep.txt"]
    assert (dest / "keep.txt").read_text() == "mine"


def test_clone_checkout_from_a_broken_mirror_fails_cleanly(origin: git.Repo, tmp_path: Path) -> None:
    dest = tmp_path / "checkout"
    with pytest.raises(InstallError) as info:
        core_git.clone_checkout(tmp_path / "no-mirror.git", origin_url(origin), dest, "main")
    assert "could not check out" in str(info.value)
    assert not dest.exists()


def test_concurrent_installs_share_one_mirror(origin: git.Repo, tmp_path: Path) -> None:
    url = origin_url(origin)
    mirrors = tmp_path / "mirrors"
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from supervisor.core import git as core_git\n"
        "mirrors, url, dest = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])\n"
        "if dest.name.endswith(('0', '2', '4', '6', '8')):\n"
        "    print(core_git.checkout_latest(mirrors, url, dest, 'main')[1])\n"
        "else:\n"
        "    print(core_git.clone_checkout(core_git.ensure_mirror(mirrors, url), url, dest, 'main'))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(mirrors), url, str(tmp_path / f"c{i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(20)
    ]
    results = [(p.communicate(timeout=120), p.returncode) for p in procs]

    for (out, err), rc in results:
        assert rc == 0, err
        assert out.strip() == head_sha(origin, "main")
    assert [p.name for p in mirrors.iterdir() if p.suffix == ".git"] == [core_git.mirror_path(mirrors, url).name]
    for i in range(20):
        alternates = tmp_path / f"c{i}" / ".git" / "objects" / "info" / "alternates"
        assert Path(alternates.read_text().strip()).parent.parent == mirrors


# -- checkout_latest -------------------------------------------------------------------


def hold_ref_updates_until(mirror: Path, path: Path) -> None:
    """Make the mirror's next fetch update its refs only once ``path`` exists (a real git hook).

    With ``path`` a file the clone checks out, the clone has read the old refs by
    then: the fetch brings a commit the clone did not see, every time.
    """
    hook = mirror / "hooks" / "reference-transaction"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(
        "#!/bin/sh\n"
        '[ "$1" = prepared ] || exit 0\n'
        f"for i in $(seq 200); do [ -e '{path}' ] && exit 0; sleep 0.05; done\n"
        "echo 'the clone never checked out' >&2; exit 1\n"
    )
    hook.chmod(0o755)


def test_checkout_latest_frees_the_mirror_once_its_fetch_is_done(
    origin: git.Repo, mirrors: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flock = require_binary("flock")
    url = origin_url(origin)
    mirror = core_git.ensure_mirror(mirrors, url)
    lock = mirror.with_name(mirror.name + ".lock")
    report = tmp_path / "lock-seen-by-the-clone"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    # At the end of its checkout the clone waits for the mirror's lock: it gets it only if
    # the lock went with the fetch (held until the clone ended, it would time out).
    (hooks / "post-checkout").write_text(
        f"#!/bin/sh\nif '{flock}' -w 10 '{lock}' true; then echo free > '{report}'; else echo held > '{report}'; fi\n"
    )
    (hooks / "post-checkout").chmod(0o755)
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "core.hooksPath")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", str(hooks))

    _, commit = core_git.checkout_latest(mirrors, url, tmp_path / "checkout", "main")

    assert commit == head_sha(origin, "main")
    assert report.read_text() == "free\n"


class LatestCase(t.NamedTuple):
    test_id: str
    ref: str
    branch: str | None


LATEST_CASES = [
    LatestCase("branch", "main", "main"),
    LatestCase("default-branch", "", "main"),
    LatestCase("other-branch", "dev", "dev"),
]


@pytest.mark.parametrize("case", LATEST_CASES, ids=[c.test_id for c in LATEST_CASES])
def test_checkout_latest_checks_out_what_the_fetch_brought(
    case: LatestCase, origin: git.Repo, mirrors: Path, tmp_path: Path
) -> None:
    url = origin_url(origin)
    mirror = core_git.ensure_mirror(mirrors, url)
    branch = case.branch or "main"
    origin.heads[branch].checkout()
    newest = commit_files(origin, {"bot.py": "print('v3')\n"}, "third")
    origin.heads.main.checkout()
    dest = tmp_path / "checkout"
    hold_ref_updates_until(mirror, dest / "bot.py")

    got, commit = core_git.checkout_latest(mirrors, url, dest, case.ref)

    assert got == mirror
    assert commit == newest == core_git.current_commit(dest)
    assert core_git.describe_ref(dest) == case.branch
    assert (dest / "bot.py").read_text() == "print('v3')\n"
    with git.Repo(dest) as cloned:
        assert cloned.remote("origin").url == url
        tracking = cloned.active_branch.tracking_branch()
        assert tracking is not None
        assert tracking.name == f"origin/{branch}"
        assert tracking.commit.hexsha == newest
        assert not cloned.is_dirty(untracked_files=True)
    assert own_object_bytes(dest) < 4096


def test_checkout_latest_of_an_unchanged_branch_and_of_a_tag(origin: git.Repo, mirrors: Path, tmp_path: Path) -> None:
    url = origin_url(origin)
    core_git.ensure_mirror(mirrors, url)

    _, commit = core_git.checkout_latest(mirrors, url, tmp_path / "a", "main")
    _, tagged = core_git.checkout_latest(mirrors, url, tmp_path / "b", "v1-annotated")

    assert commit == head_sha(origin, "main")
    assert core_git.describe_ref(tmp_path / "a") == "main"
    assert tagged == head_sha(origin, "v1")
    assert core_git.describe_ref(tmp_path / "b") is None


def test_checkout_latest_creates_the_mirror_first(origin: git.Repo, mirrors: Path, tmp_path: Path) -> None:
    url = origin_url(origin)
    mirror, commit = core_git.checkout_latest(mirrors, url, tmp_path / "checkout", "dev")
    assert mirror == core_git.mirror_path(mirrors, url)
    assert commit == head_sha(origin, "dev")
    assert core_git.describe_ref(tmp_path / "checkout") == "dev"


def test_checkout_latest_of_a_commit_only_the_fetch_brings(origin: git.Repo, mirrors: Path, tmp_path: Path) -> None:
    url = origin_url(origin)
    core_git.ensure_mirror(mirrors, url)
    newest = commit_files(origin, {"bot.py": "print('v3')\n"}, "third")

    _, commit = core_git.checkout_latest(mirrors, url, tmp_path / "checkout", newest[:12])

    assert commit == newest
    assert core_git.describe_ref(tmp_path / "checkout") is None


def test_checkout_latest_fails_cleanly_when_the_fetch_fails(origin: git.Repo, mirrors: Path, tmp_path: Path) -> None:
    url = origin_url(origin)
    mirror = core_git.ensure_mirror(mirrors, url)
    origin.close()
    Path(url).rename(tmp_path / "moved-away")
    dest = tmp_path / "checkout"

    with pytest.raises(InstallError) as info:
        core_git.checkout_latest(mirrors, url, dest, "main")

    assert info.value.step == "fetch"
    assert str(info.value).startswith(f"repository '{url}': could not fetch it (")
    assert "does not appear to be a git repository" in info.value.log_tail
    assert not dest.exists()
    assert (mirror / "HEAD").is_file()  # the mirror stays for the next try


def test_checkout_latest_unknown_ref_leaves_nothing(origin: git.Repo, mirrors: Path, tmp_path: Path) -> None:
    url = origin_url(origin)
    core_git.ensure_mirror(mirrors, url)
    dest = tmp_path / "checkout"
    dest.mkdir()
    with pytest.raises(InstallError, match="ref 'no-such-branch' not found"):
        core_git.checkout_latest(mirrors, url, dest, "no-such-branch")
    assert list(dest.iterdir()) == []


# -- fetch_and_checkout / checkout_commit ----------------------------------------------


@pytest.fixture
def installed(origin: git.Repo, mirrors: Path, tmp_path: Path) -> tuple[Path, Path, str]:
    """A checkout of ``main`` with an untracked ``conf/`` file, and its mirror."""
    url = origin_url(origin)
    mirror = core_git.ensure_mirror(mirrors, url)
    dest = tmp_path / "checkout"
    core_git.clone_checkout(mirror, url, dest, "main")
    (dest / "conf").mkdir()
    (dest / "conf" / "secrets.yml").write_text("api_key: 1\n")
    return dest, mirror, url


def test_fetch_and_checkout_moves_to_the_new_commit(
    origin: git.Repo, installed: tuple[Path, Path, str], mirrors: Path
) -> None:
    dest, mirror, url = installed
    before = head_sha(origin, "main")
    after = commit_files(origin, {"bot.py": "print('v3')\n"}, "third")
    core_git.ensure_mirror(mirrors, url)

    old, new = core_git.fetch_and_checkout(dest, mirror, url, "main")

    assert (old, new) == (before, after)
    assert core_git.current_commit(dest) == after
    assert core_git.describe_ref(dest) == "main"
    assert (dest / "bot.py").read_text() == "print('v3')\n"
    assert (dest / "conf" / "secrets.yml").read_text() == "api_key: 1\n"
    with git.Repo(dest) as cloned:
        assert cloned.remote("origin").url == url
    assert own_object_bytes(dest) < 4096

    core_git.checkout_commit(dest, old)

    assert core_git.current_commit(dest) == before
    assert (dest / "bot.py").read_text() == "print('v2')\n"
    assert (dest / "conf" / "secrets.yml").exists()


def test_fetch_and_checkout_follows_a_force_pushed_branch(
    origin: git.Repo, installed: tuple[Path, Path, str], mirrors: Path
) -> None:
    dest, mirror, url = installed
    origin.head.reset("HEAD~1", index=True, working_tree=True)
    rewritten = commit_files(origin, {"other.txt": "rewritten\n"}, "rewrite")
    core_git.ensure_mirror(mirrors, url)

    _, new = core_git.fetch_and_checkout(dest, mirror, url, "main")

    assert new == rewritten
    assert not (dest / "bot.py").read_text().endswith("v2')\n")


def test_fetch_and_checkout_switches_to_a_tag(origin: git.Repo, installed: tuple[Path, Path, str]) -> None:
    dest, mirror, url = installed
    old, new = core_git.fetch_and_checkout(dest, mirror, url, "v1")
    assert old == head_sha(origin, "main")
    assert new == head_sha(origin, "v1")
    assert core_git.describe_ref(dest) is None
    _, back = core_git.fetch_and_checkout(dest, mirror, url, "main")
    assert back == head_sha(origin, "main")
    assert core_git.describe_ref(dest) == "main"


def test_fetch_and_checkout_refuses_uncommitted_tracked_changes(
    origin: git.Repo, installed: tuple[Path, Path, str], mirrors: Path
) -> None:
    dest, mirror, url = installed
    commit_files(origin, {"bot.py": "print('v3')\n"}, "third")
    core_git.ensure_mirror(mirrors, url)
    (dest / "bot.py").write_text("print('edited')\n")

    with pytest.raises(InstallError) as info:
        core_git.fetch_and_checkout(dest, mirror, url, "main")

    assert "uncommitted changes (bot.py)" in str(info.value)
    assert str(info.value).startswith(f"checkout '{dest}': ")
    assert (dest / "bot.py").read_text() == "print('edited')\n"
    assert core_git.current_commit(dest) == head_sha(origin, "main~1")


def test_resolve_update_names_staged_and_unstaged_changes_and_ignores_untracked(
    origin: git.Repo, installed: tuple[Path, Path, str]
) -> None:
    dest, mirror, url = installed
    (dest / "untracked.txt").write_text("mine\n")
    assert core_git.resolve_update(dest, mirror, url, "v1") == head_sha(origin, "v1")

    (dest / "staged.py").write_text("x = 1\n")
    subprocess.run(["git", "-C", str(dest), "add", "staged.py"], check=True)
    (dest / "bot.py").write_text("print('edited')\n")
    with pytest.raises(InstallError) as info:
        core_git.resolve_update(dest, mirror, url, "main")
    assert "uncommitted changes (bot.py, staged.py)" in str(info.value)


def test_fetch_and_checkout_unknown_ref(
    installed: tuple[Path, Path, str],
) -> None:
    dest, mirror, url = installed
    before = core_git.current_commit(dest)
    with pytest.raises(InstallError, match="ref 'gone' not found"):
        core_git.fetch_and_checkout(dest, mirror, url, "gone")
    assert core_git.current_commit(dest) == before


def test_fetch_and_checkout_not_a_repository(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="not a git work tree"):
        core_git.fetch_and_checkout(tmp_path, tmp_path, "x", "main")


def test_checkout_commit_unknown_commit(installed: tuple[Path, Path, str]) -> None:
    dest, _, _ = installed
    with pytest.raises(InstallError, match="could not go back to commit"):
        core_git.checkout_commit(dest, "0" * 40)


# -- current_commit / describe_ref -----------------------------------------------------


def test_head_readers_agree_with_gitpython(tmp_path: Path) -> None:
    repo = make_origin(tmp_path / "repo", {"a.txt": "a\n"})
    path = tmp_path / "repo"
    second = commit_files(repo, {"a.txt": "b\n"}, "second")

    assert core_git.current_commit(path) == repo.head.commit.hexsha == second
    assert core_git.describe_ref(path) == repo.active_branch.name == "main"

    repo.git.pack_refs("--all")
    assert not (path / ".git" / "refs" / "heads" / "main").exists()
    assert (path / ".git" / "packed-refs").is_file()
    assert core_git.current_commit(path) == repo.head.commit.hexsha
    assert core_git.describe_ref(path) == "main"

    repo.git.checkout("--detach", "HEAD~1")
    assert repo.head.is_detached
    assert core_git.current_commit(path) == repo.head.commit.hexsha != second
    assert core_git.describe_ref(path) is None

    repo.git.worktree("add", "-b", "side", str(tmp_path / "wt"), "main")
    assert (tmp_path / "wt" / ".git").is_file()
    assert core_git.current_commit(tmp_path / "wt") == second
    assert core_git.describe_ref(tmp_path / "wt") == "side"


def test_head_readers_outside_a_repository(tmp_path: Path) -> None:
    assert core_git.current_commit(tmp_path) is None
    assert core_git.describe_ref(tmp_path) is None
    assert core_git.current_commit(tmp_path / "missing") is None


def test_head_readers_on_an_unborn_branch(tmp_path: Path) -> None:
    require_binary("git")
    git.Repo.init(tmp_path / "empty", initial_branch="trunk")
    assert core_git.current_commit(tmp_path / "empty") is None
    assert core_git.describe_ref(tmp_path / "empty") == "trunk"


def test_new_loads_no_gitpython_and_update_reads_with_it(origin: git.Repo, tmp_path: Path) -> None:
    # GitPython's import alone costs more than half of a `git clone --shared`: `new` (mirror, clone, HEAD)
    # stays plain git; `update` reads refs and the dirty state through GitPython.
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from supervisor.core import git as core_git\n"
        "url, home = sys.argv[1], Path(sys.argv[2])\n"
        "shipped = home / 'shipped'\n"
        "shipped.mkdir()\n"
        "(shipped / 'bot.py').write_text('x = 1\\n')\n"
        "builtin = core_git.ensure_builtin_origin(shipped, home / 'origins' / 'shipped')\n"
        "mirror = core_git.ensure_mirror(home / 'mirrors', url)\n"
        "core_git.clone_checkout(mirror, url, home / 'a', 'main')\n"
        "_, commit = core_git.checkout_latest(home / 'mirrors', url, home / 'b', 'main')\n"
        "print(commit, core_git.describe_ref(home / 'b'), core_git.current_commit(Path(builtin)) is not None)\n"
        "assert 'git' not in sys.modules, 'GitPython was imported'\n"
        "core_git.fetch_and_checkout(home / 'a', mirror, url, 'dev')\n"
        "assert 'git' in sys.modules, 'update did not read the checkout with GitPython'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, origin_url(origin), str(tmp_path / "home")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [head_sha(origin, "main"), "main", "True"]


def test_a_builtin_origin_keeps_shipped_file_modes_in_the_checkout(tmp_path: Path) -> None:
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "bot.py").write_text("print('hi')\n")
    (shipped / "private.conf").write_text("key=1\n")
    (shipped / "private.conf").chmod(0o600)
    (shipped / "run.sh").write_text("#!/bin/sh\n")
    (shipped / "run.sh").chmod(0o750)
    origin = core_git.ensure_builtin_origin(shipped, tmp_path / "home" / "origins" / "shipped")
    mirror = core_git.ensure_mirror(tmp_path / "home" / "mirrors", origin)
    checkout = tmp_path / "checkout"
    core_git.clone_checkout(mirror, origin, checkout, "main")
    assert (checkout / "private.conf").stat().st_mode & 0o777 != 0o600  # git alone loses it
    core_git.copy_file_modes(Path(origin), checkout)
    modes = {name: (checkout / name).stat().st_mode & 0o777 for name in ("bot.py", "private.conf", "run.sh")}
    assert modes == {"bot.py": (shipped / "bot.py").stat().st_mode & 0o777, "private.conf": 0o600, "run.sh": 0o750}

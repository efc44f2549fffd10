"""Tests for supervisor.core.install against real git origins in tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
import typing as t
from pathlib import Path

import git
import pytest

from supervisor.core import install
from supervisor.errors import InstallError
from tests.conftest import commit_files, make_origin, require_binary, wait_until

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def origin(tmp_path: Path) -> git.Repo:
    """An origin with a branch ``main`` (two commits), a branch ``dev`` and tags."""
    repo = make_origin(tmp_path / "origin", {"bot.py": "print('v1')\n"}, "first")
    repo.create_tag("v1")
    repo.create_tag("v1-annotated", message="release 1")
    commit_files(repo, {"bot.py": "print('v2')\n"}, "second")
    repo.create_head("dev")
    repo.heads.dev.checkout()
    commit_files(repo, {"dev.txt": "dev\n"}, "on dev")
    repo.heads.main.checkout()
    return repo


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
    first = install.mirror_path(mirrors, str(local))
    assert first.parent == mirrors
    assert first.name.startswith("hummingbot-")
    assert first.name.endswith(".git")
    assert install.mirror_path(mirrors, f"file://{local}") == first
    assert install.mirror_path(mirrors, f"{local}/") == first
    remote = "https://github.com/hummingbot/hummingbot"
    assert install.mirror_path(mirrors, remote) == install.mirror_path(mirrors, remote + ".git")
    assert install.mirror_path(mirrors, remote).name.startswith("hummingbot-")
    other = install.mirror_path(mirrors, "https://github.com/fork/hummingbot.git")
    assert other != install.mirror_path(mirrors, remote)
    scp = install.mirror_path(mirrors, "git@github.com:hummingbot/gateway.git")
    assert scp.name.startswith("gateway-")


def test_ensure_mirror_creates_once_then_only_fetches(origin: git.Repo, mirrors: Path) -> None:
    mirror = install.ensure_mirror(mirrors, origin_url(origin))
    assert mirror == install.mirror_path(mirrors, origin_url(origin))
    bare = git.Repo(mirror)
    assert bare.bare
    assert bare.commit("main").hexsha == head_sha(origin, "main")
    assert bare.commit("dev").hexsha == head_sha(origin, "dev")
    with bare.config_reader() as config:
        assert config.get_value("gc", "pruneExpire") == "never"
        assert config.get_value("gc", "auto") == 0
    marker = mirror / "created-by-test"
    marker.write_text("x")
    objects_inode = (mirror / "objects").stat().st_ino

    new = commit_files(origin, {"bot.py": "print('v3')\n"}, "third")
    again = install.ensure_mirror(mirrors, f"file://{origin_url(origin)}")

    assert again == mirror
    assert marker.exists(), "the mirror was cloned again instead of fetched"
    assert (mirror / "objects").stat().st_ino == objects_inode
    assert git.Repo(mirror).commit("main").hexsha == new
    assert [p.name for p in mirrors.iterdir() if p.suffix == ".git"] == [mirror.name]


def test_ensure_mirror_bad_url_leaves_nothing(tmp_path: Path, mirrors: Path) -> None:
    missing = tmp_path / "no-such-repo"
    with pytest.raises(InstallError) as info:
        install.ensure_mirror(mirrors, str(missing))
    assert f"repository '{missing}'" in str(info.value)
    assert "could not clone" in str(info.value)
    assert info.value.step == "clone"
    assert "does not exist" in info.value.log_tail
    assert not [p for p in mirrors.iterdir() if not p.name.endswith(".lock")]


def test_ensure_mirror_refuses_a_folder_that_is_not_a_repository(origin: git.Repo, mirrors: Path) -> None:
    mirror = install.mirror_path(mirrors, origin_url(origin))
    mirror.mkdir(parents=True)
    (mirror / "junk").write_text("junk")
    with pytest.raises(InstallError, match="not a git repository"):
        install.ensure_mirror(mirrors, origin_url(origin))
    assert (mirror / "junk").exists()


def test_progress_is_reported_while_cloning(tmp_path: Path, mirrors: Path) -> None:
    files = {f"data/file{i:03}.txt": f"line {i}\n" * (i % 7 + 1) for i in range(300)}
    repo = make_origin(tmp_path / "big", files)
    calls: list[tuple[str, int | None, int | None]] = []

    def progress(stage: str, current: int | None, total: int | None) -> None:
        calls.append((stage, current, total))

    # file:// makes git use its transport (a plain path hardlinks and reports nothing).
    url = f"file://{repo.working_tree_dir}"
    mirror = install.ensure_mirror(mirrors, url, progress=progress)
    assert calls
    stages = {stage for stage, _, _ in calls}
    assert stages & {"counting objects", "receiving objects", "enumerating objects"}
    assert all(isinstance(c, int) or c is None for _, c, _ in calls)
    assert any(total is not None and total > 300 for _, _, total in calls)

    commit = install.clone_checkout(mirror, url, tmp_path / "c", "main", progress=progress)
    assert commit == repo.head.commit.hexsha
    assert len(list((tmp_path / "c" / "data").iterdir())) == 300


# -- clone_checkout --------------------------------------------------------------------


def test_clone_checkout_borrows_objects_from_the_mirror(origin: git.Repo, mirrors: Path, tmp_path: Path) -> None:
    url = origin_url(origin)
    mirror = install.ensure_mirror(mirrors, url)
    dest = tmp_path / "instances" / "a" / "checkout"

    commit = install.clone_checkout(mirror, url, dest, "main")

    assert commit == head_sha(origin, "main")
    alternates = (dest / ".git" / "objects" / "info" / "alternates").read_text()
    assert Path(alternates.strip()) == mirror / "objects"
    assert own_object_bytes(dest) == 0
    cloned = git.Repo(dest)
    assert cloned.remote("origin").url == url
    with cloned.config_reader() as config:
        fetch = config.get_value('remote "origin"', "fetch")
    assert fetch == "+refs/heads/*:refs/remotes/origin/*"
    assert (dest / "bot.py").read_text() == "print('v2')\n"


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
    mirror = install.ensure_mirror(mirrors, url)
    dest = tmp_path / "checkout"

    commit = install.clone_checkout(mirror, url, dest, case.ref(origin))

    cloned = git.Repo(dest)
    assert commit == case.commit(origin) == cloned.head.commit.hexsha
    assert install.current_commit(dest) == commit
    assert install.describe_ref(dest) == case.branch
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
    mirror = install.ensure_mirror(mirrors, url)
    dest = tmp_path / "checkout"
    if pre_existing:
        dest.mkdir()

    with pytest.raises(InstallError) as info:
        install.clone_checkout(mirror, url, dest, "no-such-branch")

    assert "ref 'no-such-branch' not found" in str(info.value)
    assert str(info.value).startswith(f"repository '{url}': ")
    if pre_existing:
        assert dest.is_dir()
        assert list(dest.iterdir()) == []
    else:
        assert not dest.exists()


def test_clone_checkout_refuses_a_non_empty_dest(origin: git.Repo, mirrors: Path, tmp_path: Path) -> None:
    url = origin_url(origin)
    mirror = install.ensure_mirror(mirrors, url)
    dest = tmp_path / "checkout"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")

    with pytest.raises(InstallError, match="exists and is not empty"):
        install.clone_checkout(mirror, url, dest, "main")

    assert [p.name for p in dest.iterdir()] == ["keep.txt"]
    assert (dest / "keep.txt").read_text() == "mine"


def test_clone_checkout_from_a_broken_mirror_fails_cleanly(origin: git.Repo, tmp_path: Path) -> None:
    dest = tmp_path / "checkout"
    with pytest.raises(InstallError) as info:
        install.clone_checkout(tmp_path / "no-mirror.git", origin_url(origin), dest, "main")
    assert "could not check out" in str(info.value)
    assert not dest.exists()


def test_concurrent_installs_share_one_mirror(origin: git.Repo, tmp_path: Path) -> None:
    url = origin_url(origin)
    mirrors = tmp_path / "mirrors"
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from supervisor.core import install\n"
        "mirror = install.ensure_mirror(Path(sys.argv[1]), sys.argv[2])\n"
        "dest = Path(sys.argv[3])\n"
        "print(install.clone_checkout(mirror, sys.argv[2], dest, 'main'))\n"
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
    assert [p.name for p in mirrors.iterdir() if p.suffix == ".git"] == [install.mirror_path(mirrors, url).name]
    for i in range(20):
        alternates = tmp_path / f"c{i}" / ".git" / "objects" / "info" / "alternates"
        assert Path(alternates.read_text().strip()).parent.parent == mirrors


# -- fetch_and_checkout / checkout_commit ----------------------------------------------


@pytest.fixture
def installed(origin: git.Repo, mirrors: Path, tmp_path: Path) -> tuple[Path, Path, str]:
    """A checkout of ``main`` with an untracked ``conf/`` file, and its mirror."""
    url = origin_url(origin)
    mirror = install.ensure_mirror(mirrors, url)
    dest = tmp_path / "checkout"
    install.clone_checkout(mirror, url, dest, "main")
    (dest / "conf").mkdir()
    (dest / "conf" / "secrets.yml").write_text("api_key: 1\n")
    return dest, mirror, url


def test_fetch_and_checkout_moves_to_the_new_commit(
    origin: git.Repo, installed: tuple[Path, Path, str], mirrors: Path
) -> None:
    dest, mirror, url = installed
    before = head_sha(origin, "main")
    after = commit_files(origin, {"bot.py": "print('v3')\n"}, "third")
    install.ensure_mirror(mirrors, url)

    old, new = install.fetch_and_checkout(dest, mirror, url, "main")

    assert (old, new) == (before, after)
    assert install.current_commit(dest) == after
    assert install.describe_ref(dest) == "main"
    assert (dest / "bot.py").read_text() == "print('v3')\n"
    assert (dest / "conf" / "secrets.yml").read_text() == "api_key: 1\n"
    assert git.Repo(dest).remote("origin").url == url
    assert own_object_bytes(dest) < 4096

    install.checkout_commit(dest, old)

    assert install.current_commit(dest) == before
    assert (dest / "bot.py").read_text() == "print('v2')\n"
    assert (dest / "conf" / "secrets.yml").exists()


def test_fetch_and_checkout_follows_a_force_pushed_branch(
    origin: git.Repo, installed: tuple[Path, Path, str], mirrors: Path
) -> None:
    dest, mirror, url = installed
    origin.head.reset("HEAD~1", index=True, working_tree=True)
    rewritten = commit_files(origin, {"other.txt": "rewritten\n"}, "rewrite")
    install.ensure_mirror(mirrors, url)

    _, new = install.fetch_and_checkout(dest, mirror, url, "main")

    assert new == rewritten
    assert not (dest / "bot.py").read_text().endswith("v2')\n")


def test_fetch_and_checkout_switches_to_a_tag(origin: git.Repo, installed: tuple[Path, Path, str]) -> None:
    dest, mirror, url = installed
    old, new = install.fetch_and_checkout(dest, mirror, url, "v1")
    assert old == head_sha(origin, "main")
    assert new == head_sha(origin, "v1")
    assert install.describe_ref(dest) is None
    _, back = install.fetch_and_checkout(dest, mirror, url, "main")
    assert back == head_sha(origin, "main")
    assert install.describe_ref(dest) == "main"


def test_fetch_and_checkout_refuses_uncommitted_tracked_changes(
    origin: git.Repo, installed: tuple[Path, Path, str], mirrors: Path
) -> None:
    dest, mirror, url = installed
    commit_files(origin, {"bot.py": "print('v3')\n"}, "third")
    install.ensure_mirror(mirrors, url)
    (dest / "bot.py").write_text("print('edited')\n")

    with pytest.raises(InstallError) as info:
        install.fetch_and_checkout(dest, mirror, url, "main")

    assert "uncommitted changes (bot.py)" in str(info.value)
    assert str(info.value).startswith(f"checkout '{dest}': ")
    assert (dest / "bot.py").read_text() == "print('edited')\n"
    assert install.current_commit(dest) == head_sha(origin, "main~1")


def test_fetch_and_checkout_unknown_ref(
    installed: tuple[Path, Path, str],
) -> None:
    dest, mirror, url = installed
    before = install.current_commit(dest)
    with pytest.raises(InstallError, match="ref 'gone' not found"):
        install.fetch_and_checkout(dest, mirror, url, "gone")
    assert install.current_commit(dest) == before


def test_fetch_and_checkout_not_a_repository(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="not a git work tree"):
        install.fetch_and_checkout(tmp_path, tmp_path, "x", "main")


def test_checkout_commit_unknown_commit(installed: tuple[Path, Path, str]) -> None:
    dest, _, _ = installed
    with pytest.raises(InstallError, match="could not go back to commit"):
        install.checkout_commit(dest, "0" * 40)


# -- current_commit / describe_ref -----------------------------------------------------


def test_head_readers_agree_with_gitpython(tmp_path: Path) -> None:
    repo = make_origin(tmp_path / "repo", {"a.txt": "a\n"})
    path = tmp_path / "repo"
    second = commit_files(repo, {"a.txt": "b\n"}, "second")

    assert install.current_commit(path) == repo.head.commit.hexsha == second
    assert install.describe_ref(path) == repo.active_branch.name == "main"

    repo.git.pack_refs("--all")
    assert not (path / ".git" / "refs" / "heads" / "main").exists()
    assert (path / ".git" / "packed-refs").is_file()
    assert install.current_commit(path) == repo.head.commit.hexsha
    assert install.describe_ref(path) == "main"

    repo.git.checkout("--detach", "HEAD~1")
    assert repo.head.is_detached
    assert install.current_commit(path) == repo.head.commit.hexsha != second
    assert install.describe_ref(path) is None

    repo.git.worktree("add", "-b", "side", str(tmp_path / "wt"), "main")
    assert (tmp_path / "wt" / ".git").is_file()
    assert install.current_commit(tmp_path / "wt") == second
    assert install.describe_ref(tmp_path / "wt") == "side"


def test_head_readers_outside_a_repository(tmp_path: Path) -> None:
    assert install.current_commit(tmp_path) is None
    assert install.describe_ref(tmp_path) is None
    assert install.current_commit(tmp_path / "missing") is None


def test_head_readers_on_an_unborn_branch(tmp_path: Path) -> None:
    require_binary("git")
    git.Repo.init(tmp_path / "empty", initial_branch="trunk")
    assert install.current_commit(tmp_path / "empty") is None
    assert install.describe_ref(tmp_path / "empty") == "trunk"


# -- run_install_steps / log_tail ------------------------------------------------------


def step_env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], **extra}


def test_run_install_steps_logs_every_step(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "install.log"
    lines: list[str] = []
    steps = ["echo hello from $GREETING", "pwd", "echo to-stderr >&2"]

    install.run_install_steps(
        steps,
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
    install.run_install_steps(
        ['echo "home=[${HOME:-unset}]"'],
        cwd=tmp_path,
        env=step_env(),
        log_path=log,
    )
    assert "home=[unset]" in log.read_text()


def test_run_install_steps_appends(tmp_path: Path) -> None:
    log = tmp_path / "install.log"
    log.write_text("earlier run\n")
    install.run_install_steps(["echo again"], cwd=tmp_path, env=step_env(), log_path=log)
    text = log.read_text()
    assert text.startswith("earlier run\n")
    assert "again" in text


def test_run_install_steps_failure_names_step_code_and_tail(tmp_path: Path) -> None:
    log = tmp_path / "install.log"
    lines: list[str] = []
    steps = ["echo fine", "echo broken build; exit 3", "echo never"]

    with pytest.raises(InstallError) as info:
        install.run_install_steps(steps, cwd=tmp_path, env=step_env(), log_path=log, on_line=lines.append)

    error = info.value
    assert str(error) == (
        "install step 2/3 'echo broken build; exit 3' failed with exit code 3. "
        f"See the log at {log}; fix the cause and run 'supervisor install NAME'."
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
        install.run_install_steps([step], cwd=tmp_path, env=step_env(), log_path=log, step_timeout=0.5)

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
        install.run_install_steps(
            ["true"],
            cwd=tmp_path / "missing",
            env=step_env(),
            log_path=tmp_path / "install.log",
        )


def test_log_tail(tmp_path: Path) -> None:
    path = tmp_path / "log"
    assert install.log_tail(path) == ""
    path.write_text("".join(f"line {i}\n" for i in range(100)))
    assert install.log_tail(path, 3) == "line 97\nline 98\nline 99"
    assert install.log_tail(path).splitlines()[0] == "line 80"


def test_head_readers_do_not_load_gitpython(origin: git.Repo) -> None:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from supervisor.core import install\n"
        "path = Path(sys.argv[1])\n"
        "print(install.current_commit(path), install.describe_ref(path))\n"
        "assert 'git' not in sys.modules, 'GitPython was imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(origin.working_tree_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [head_sha(origin, "main"), "main"]


def test_a_builtin_origin_keeps_shipped_file_modes_in_the_checkout(tmp_path: Path) -> None:
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "bot.py").write_text("print('hi')\n")
    (shipped / "private.conf").write_text("key=1\n")
    (shipped / "private.conf").chmod(0o600)
    (shipped / "run.sh").write_text("#!/bin/sh\n")
    (shipped / "run.sh").chmod(0o750)
    origin = install.ensure_builtin_origin(shipped, tmp_path / "home" / "origins" / "shipped")
    mirror = install.ensure_mirror(tmp_path / "home" / "mirrors", origin)
    checkout = tmp_path / "checkout"
    install.clone_checkout(mirror, origin, checkout, "main")
    assert (checkout / "private.conf").stat().st_mode & 0o777 != 0o600  # git alone loses it
    install.copy_file_modes(Path(origin), checkout)
    modes = {name: (checkout / name).stat().st_mode & 0o777 for name in ("bot.py", "private.conf", "run.sh")}
    assert modes == {"bot.py": (shipped / "bot.py").stat().st_mode & 0o777, "private.conf": 0o600, "run.sh": 0o750}
